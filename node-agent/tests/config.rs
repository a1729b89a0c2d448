//! Configuration loading: every rejection names its key, overrides apply, the example is valid.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgdaemon_agent::config::{ignored_env_vars, AgentConfig, LogFormat, REQUIRED_PROGRAMS};
use pgdaemon_core::{ConfigError, StoreConfig};

const BASE: &str = r#"
cluster = "c1"
[node]
name = "n1"
pg_host = "10.0.0.1"
[postgres]
bin_dir = "/usr/lib/postgresql/15/bin"
data_dir = "/var/lib/postgresql/15/main"
[store]
backend = "memory"
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The key a rejection names.
fn rejected_key(text: &str, vars: &[(&str, &str)]) -> String {
    match AgentConfig::parse(text, &env(vars)) {
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(other) => panic!("expected an invalid key, got {other}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

fn with(extra_section: &str, lines: &str) -> String {
    // Appends lines to a section of BASE (sections are unique in BASE).
    BASE.replace(&format!("[{extra_section}]\n"), &format!("[{extra_section}]\n{lines}\n"))
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgdaemon.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let cfg = AgentConfig::parse(&text, &[]).unwrap();
    assert_eq!(cfg.node.name, "pg-1");
    assert!(matches!(cfg.store, StoreConfig::Dynamodb { .. }));
    assert!(!cfg.coordinator.enabled);
    assert_eq!(cfg.advertised_api_url(), "http://10.0.1.5:8008");
}

#[test]
fn defaults_fill_the_rest() {
    let cfg = AgentConfig::parse(BASE, &[]).unwrap();
    assert_eq!(cfg.node.listen, "0.0.0.0:8008");
    assert_eq!(cfg.postgres.port, 5432);
    assert_eq!(cfg.advertised_pg_port(), 5432);
    assert_eq!(cfg.postgres.replication_user, "replicator");
    assert_eq!(cfg.log.format, LogFormat::Human);
    assert_eq!(cfg.dynamic, pgdaemon_core::DynamicConfig::default());
    assert_eq!(cfg.advertised_api_url(), "http://10.0.0.1:8008");
}

#[test]
fn environment_overrides_the_file() {
    let vars = [
        ("PGDAEMON_NODE__NAME", "n2"),
        ("PGDAEMON_POSTGRES__PORT", "5433"),
        ("PGDAEMON_DYNAMIC__LEASE_MS", "20000"),
        ("PGDAEMON_LOG__FORMAT", "json"),
        ("PGDAEMON_COORDINATOR__ENABLED", "true"),
        // Not configuration: ignored (and reported), never an unknown-key error.
        ("PGDAEMON_VENV", "/somewhere"),
        ("HOME", "/root"),
    ];
    let cfg = AgentConfig::parse(BASE, &env(&vars)).unwrap();
    assert_eq!(cfg.node.name, "n2");
    assert_eq!(cfg.postgres.port, 5433);
    assert_eq!(cfg.dynamic.lease_ms, 20000);
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert!(cfg.coordinator.enabled);
    assert_eq!(ignored_env_vars(&env(&vars)), vec!["PGDAEMON_VENV".to_string()]);
    // An override that breaks a rule is rejected like the file would be.
    assert_eq!(rejected_key(BASE, &[("PGDAEMON_DYNAMIC__RENEW_INTERVAL_MS", "9000")]), "dynamic.renew_interval_ms");
}

#[test]
fn unknown_keys_are_named() {
    for (text, key) in [
        (format!("clustr = \"x\"\n{BASE}"), "clustr"),
        (BASE.replace("backend = \"memory\"", "backend = \"etcd\"\nendpoints = [\"http://e\"]\nprefx = \"/p\""), "prefx"),
        (with("node", "nmae = \"x\""), "nmae"),
        (with("postgres", "datadir = \"/x\""), "datadir"),
        (format!("{BASE}\n[dynamic]\nlease = 3\n"), "lease"),
        (format!("{BASE}\n[coordinator]\nenable = true\n"), "enable"),
        (format!("{BASE}\n[logging]\nformat = \"json\"\n"), "logging"),
    ] {
        let err = AgentConfig::parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let err = AgentConfig::parse(BASE, &env(&[("PGDAEMON_NODE__NMAE", "x")])).unwrap_err().to_string();
    assert!(err.contains("nmae"), "{err}");
}

#[test]
fn missing_required_keys_are_named() {
    let err = AgentConfig::parse(&BASE.replace("pg_host = \"10.0.0.1\"\n", ""), &[]).unwrap_err().to_string();
    assert!(err.contains("pg_host"), "{err}");
    let err = AgentConfig::parse(&BASE.replace("cluster = \"c1\"\n", ""), &[]).unwrap_err().to_string();
    assert!(err.contains("cluster"), "{err}");
}

#[test]
fn impossible_timings_are_rejected() {
    let t = |lines: &str| format!("{BASE}\n[dynamic]\n{lines}\n");
    assert_eq!(rejected_key(&t("lease_ms = 500"), &[]), "dynamic.lease_ms");
    assert_eq!(rejected_key(&t("renew_interval_ms = 6000"), &[]), "dynamic.renew_interval_ms");
    assert_eq!(rejected_key(&t("safety_margin_ms = 9000"), &[]), "dynamic.safety_margin_ms");
    assert_eq!(rejected_key(&t("probe_interval_ms = 0"), &[]), "dynamic.probe_interval_ms");
    assert_eq!(rejected_key(&t("synchronous_mode = \"on\"\nsynchronous_node_count = 0"), &[]), "dynamic.synchronous_node_count");
}

#[test]
fn bad_names_and_addresses_are_rejected() {
    assert_eq!(rejected_key(&BASE.replace("cluster = \"c1\"", "cluster = \"a b\""), &[]), "cluster");
    assert_eq!(rejected_key(&BASE.replace("name = \"n1\"", "name = \"n/1\""), &[]), "node.name");
    assert_eq!(rejected_key(&BASE.replace("name = \"n1\"", "name = \"\""), &[]), "node.name");
    assert_eq!(rejected_key(&with("node", "listen = \"8008\""), &[]), "node.listen");
    assert_eq!(rejected_key(&with("node", "api_url = \"10.0.0.1:8008\""), &[]), "node.api_url");
    assert_eq!(rejected_key(&with("node", "imds_endpoint = \"169.254.169.254\""), &[]), "node.imds_endpoint");
    assert_eq!(rejected_key(&BASE.replace("pg_host = \"10.0.0.1\"", "pg_host = \" \""), &[]), "node.pg_host");
    assert_eq!(rejected_key(&with("node", "pg_port = 0"), &[]), "node.pg_port");
    assert_eq!(rejected_key(&with("node", "instance_id = \"\""), &[]), "node.instance_id");
    assert_eq!(rejected_key(&with("postgres", "port = 0"), &[]), "postgres.port");
    assert_eq!(rejected_key(&with("postgres", "replication_user = \"\""), &[]), "postgres.replication_user");
}

#[test]
fn password_sources_are_checked() {
    let both = with("postgres", "password_file = \"/etc/pw\"\nssm_parameter = \"/pgdaemon/pw\"");
    assert_eq!(rejected_key(&both, &[]), "postgres.ssm_parameter");
    assert_eq!(rejected_key(&with("postgres", "password_file = \"pw\""), &[]), "postgres.password_file");
    assert_eq!(rejected_key(&with("postgres", "ssm_parameter = \"bad name!\""), &[]), "postgres.ssm_parameter");
    let ssm = AgentConfig::parse(&with("postgres", "ssm_parameter = \"/pgdaemon/c1/replication\""), &[]);
    assert_eq!(ssm.is_ok(), cfg!(feature = "ssm"));
}

#[test]
fn bootstrap_settings_are_checked() {
    let ok_pg = "password_file = \"/etc/pw\"\nrewind_user = \"rewinder\"\nrewind_password_file = \"/etc/rpw\"";
    let boot = |pg: &str, b: &str| format!("{}\n[bootstrap]\nenabled = true\n{b}\n", with("postgres", pg));
    let good = AgentConfig::parse(&boot(ok_pg, "peer_networks = [\"10.0.0.0/16\"]"), &[]).unwrap();
    assert!(good.bootstrap.enabled && good.bootstrap.data_checksums);
    assert_eq!(good.bootstrap.locale, "C.UTF-8");
    for (pg, b, key) in [
        ("password_file = \"/etc/pw\"", "", "bootstrap.peer_networks"),
        ("", "peer_networks = [\"10.0.0.0/16\"]", "postgres.password_file"),
        (
            "password_file = \"/etc/pw\"\nreplication_user = \"postgres\"",
            "peer_networks = [\"10.0.0.0/16\"]",
            "postgres.replication_user",
        ),
        (ok_pg, "peer_networks = [\"10.0.0.0\"]", "bootstrap.peer_networks"),
        (ok_pg, "peer_networks = [\"10.0.0.0/16\"]\nlocale = \"en_US.UTF-8; rm -rf /\"", "bootstrap.locale"),
        (ok_pg, "peer_networks = [\"10.0.0.0/16\"]\nlock_s = 1", "bootstrap.lock_s"),
        (ok_pg, "peer_networks = [\"10.0.0.0/16\"]\nlocal = \"C\"", "local"),
    ] {
        let text = boot(pg, b);
        match AgentConfig::parse(&text, &[]) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            Err(other) => assert!(other.to_string().contains(key), "{key}: {other}"),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }
    // The environment reaches the section too.
    let over =
        AgentConfig::parse(&boot(ok_pg, "peer_networks = [\"10.0.0.0/16\"]"), &env(&[("PGDAEMON_BOOTSTRAP__LOCK_S", "90")]))
            .unwrap();
    assert_eq!(over.bootstrap.lock_s, 90);
}

#[test]
fn api_token_sources_are_checked() {
    let api = |lines: &str| format!("{BASE}\n[api]\n{lines}\n");
    let ok = AgentConfig::parse(&api("token_ssm_parameter = \"/pgdaemon/c1/api-token\""), &[]).unwrap();
    assert_eq!(ok.api.token_ssm_parameter.as_deref(), Some("/pgdaemon/c1/api-token"));
    assert!(ok.api.has_credentials());
    assert!(ok.to_toml().contains("token_ssm_parameter = \"/pgdaemon/c1/api-token\""));
    let both = api("token_file = \"/etc/pgdaemon/api-token\"\ntoken_ssm_parameter = \"/pgdaemon/c1/api-token\"");
    assert_eq!(rejected_key(&both, &[]), "api.token_ssm_parameter");
    assert_eq!(rejected_key(&api("token_ssm_parameter = \"pgdaemon/c1/api-token\""), &[]), "api.token_ssm_parameter");
    // The environment override names the same key.
    let from_env = AgentConfig::parse(BASE, &env(&[("PGDAEMON_API__TOKEN_SSM_PARAMETER", "/pgdaemon/c1/api-token")])).unwrap();
    assert_eq!(from_env.api.token_ssm_parameter.as_deref(), Some("/pgdaemon/c1/api-token"));
    assert_eq!(
        rejected_key(
            &api("token_file = \"/etc/pgdaemon/api-token\""),
            &[("PGDAEMON_API__TOKEN_SSM_PARAMETER", "/pgdaemon/c1/api-token")]
        ),
        "api.token_ssm_parameter"
    );
}

#[test]
fn server_parameters_take_toml_values() {
    let text = format!("{BASE}\n[postgres.parameters]\nmax_connections = 100\nwal_log_hints = true\nlisten_addresses = \"*\"\n");
    let cfg = AgentConfig::parse(&text, &[]).unwrap();
    let rendered: Vec<String> = cfg.postgres.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(rendered, ["listen_addresses=*", "max_connections=100", "wal_log_hints=on"]);
    let bad = format!("{BASE}\n[postgres.parameters]\n\"max connections\" = 1\n");
    assert_eq!(rejected_key(&bad, &[]), "postgres.parameters.max connections");
    assert_eq!(rejected_key(&with("postgres", "run_as = \"\""), &[]), "postgres.run_as");
    assert_eq!(rejected_key(&with("postgres", "log_file = \"pg.log\""), &[]), "postgres.log_file");
}

#[test]
fn store_and_log_sections_are_checked() {
    let etcd = BASE.replace("backend = \"memory\"", "backend = \"etcd\"\nendpoints = []");
    assert_eq!(rejected_key(&etcd, &[]), "store.endpoints");
    let err = AgentConfig::parse(&BASE.replace("backend = \"memory\"", "backend = \"zookeeper\""), &[]).unwrap_err().to_string();
    assert!(err.contains("zookeeper"), "{err}");
    assert_eq!(rejected_key(&format!("{BASE}\n[log]\nlevel = \"info,[[\"\n"), &[]), "log.level");
    let err = AgentConfig::parse(&format!("{BASE}\n[log]\nformat = \"xml\"\n"), &[]).unwrap_err().to_string();
    assert!(err.contains("xml"), "{err}");
    assert_eq!(
        rejected_key(&with("postgres", "").replace("/var/lib/postgresql/15/main", "relative/dir"), &[]),
        "postgres.data_dir"
    );
}

/// A fake bin_dir holding executables with the given names.
fn bin_dir(dir: &Path, programs: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in programs {
        let path = bin.join(p);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn paths_config(bin: &Path, data: &Path) -> String {
    BASE.replace("/usr/lib/postgresql/15/bin", bin.to_str().unwrap())
        .replace("/var/lib/postgresql/15/main", data.to_str().unwrap())
}

fn path_rejection(text: &str) -> (String, String) {
    let cfg = AgentConfig::parse(text, &[]).unwrap();
    match cfg.check_paths() {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected a path rejection, got {other:?}"),
    }
}

#[test]
fn paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let full = bin_dir(dir.path(), &REQUIRED_PROGRAMS);
    let data = dir.path().join("data");
    let cfg = AgentConfig::parse(&paths_config(&full, &data), &[]).unwrap();
    cfg.check_paths().unwrap(); // data dir absent but its parent exists: fine (bootstrap creates it)

    let partial_dir = tempfile::tempdir().unwrap();
    let partial = bin_dir(partial_dir.path(), &["postgres", "initdb", "pg_basebackup", "pg_rewind"]);
    let (key, reason) = path_rejection(&paths_config(&partial, &data));
    assert_eq!(key, "postgres.bin_dir");
    assert!(reason.contains("pg_ctl"), "{reason}");

    let (key, _) = path_rejection(&paths_config(&dir.path().join("nope"), &data));
    assert_eq!(key, "postgres.bin_dir");

    let (key, _) = path_rejection(&paths_config(&full, &dir.path().join("missing/parent/data")));
    assert_eq!(key, "postgres.data_dir");

    let file = dir.path().join("afile");
    std::fs::write(&file, "").unwrap();
    let (key, _) = path_rejection(&paths_config(&full, &file));
    assert_eq!(key, "postgres.data_dir");

    let text = with("postgres", &format!("password_file = \"{}\"", dir.path().join("pw").display()));
    let text = text
        .replace("/usr/lib/postgresql/15/bin", full.to_str().unwrap())
        .replace("/var/lib/postgresql/15/main", data.to_str().unwrap());
    let (key, _) = path_rejection(&text);
    assert_eq!(key, "postgres.password_file");
}

#[test]
fn load_reads_the_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let full = bin_dir(dir.path(), &REQUIRED_PROGRAMS);
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, paths_config(&full, &dir.path().join("data"))).unwrap();
    let cfg = AgentConfig::load(&path, &env(&[("PGDAEMON_NODE__PG_PORT", "6000")])).unwrap();
    assert_eq!(cfg.advertised_pg_port(), 6000);
    let err = AgentConfig::load(&dir.path().join("absent.toml"), &[]).unwrap_err().to_string();
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn printed_config_parses_back_identically() {
    let text = with("node", "instance_id = \"i-1\"\navailability_zone = \"az1\"");
    let cfg = AgentConfig::parse(&text, &[]).unwrap();
    let printed = cfg.to_toml();
    assert_eq!(AgentConfig::parse(&printed, &[]).unwrap(), cfg, "{printed}");
}

#[test]
fn check_config_prints_the_config_but_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let full = bin_dir(dir.path(), &REQUIRED_PROGRAMS);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "topsecret-value\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = paths_config(&full, &dir.path().join("data"))
        .replace("[postgres]\n", &format!("[postgres]\npassword_file = \"{}\"\n", pw.display()));
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let run_listening = |listen: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgdaemon-agent"))
            .args(args)
            .env("PGDAEMON_NODE__PG_PORT", "6001")
            .env("PGDAEMON_NODE__LISTEN", listen)
            .output()
            .unwrap()
    };
    // An unauthenticated API on a non-loopback address fails the check, as it fails the start.
    let out = run_listening("0.0.0.0:8008", &["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without authentication"), "{out:?}");
    let run = |args: &[&str]| run_listening("127.0.0.1:8008", args);
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("read (redacted)"), "{stdout}");
    assert!(stdout.contains("pg_port = 6001"), "{stdout}");
    assert!(!stdout.contains("topsecret"), "{stdout}");
    // A loose password file fails the check and still never shows the value.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains("topsecret") && !String::from_utf8_lossy(&out.stdout).contains("topsecret"));
}

#[test]
fn hosted_coordinator_fencers_are_checked() {
    let hosting = |lines: &str| format!("{BASE}[coordinator]\nenabled = true\n{lines}\n");
    for ok in ["", "fencing = [\"off\"]", "fencing = [\"command\", \"http\"]\nfence_command = \"true\""] {
        AgentConfig::parse(&hosting(ok), &[]).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    for bad in ["fencing = [\"htp\"]", "fencing = [\"ec2\"]", "fencing = [\"http\", \"off\"]", "fencing = [\"http\", \"http\"]"] {
        assert_eq!(rejected_key(&hosting(bad), &[]), "coordinator.fencing", "{bad}");
    }
    assert_eq!(rejected_key(&hosting("fencing = [\"command\"]"), &[]), "coordinator.fence_command");
    let err = AgentConfig::parse(&hosting("fencing = [\"htp\"]"), &[]).unwrap_err().to_string();
    assert!(err.contains("unknown fencer \"htp\": expected http, command"), "{err}");
    // Not hosting a coordinator: the list is not used and does not stop the agent.
    AgentConfig::parse(&format!("{BASE}[coordinator]\nfencing = [\"htp\"]\n"), &[]).unwrap();
}

#[test]
fn check_config_reports_a_fencer_typo() {
    let dir = tempfile::tempdir().unwrap();
    let full = bin_dir(dir.path(), &REQUIRED_PROGRAMS);
    let path = dir.path().join("agent.toml");
    let check = |coordinator: &str| {
        let text = format!("{}[coordinator]\nenabled = true\n{coordinator}\n", paths_config(&full, &dir.path().join("data")));
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_pgdaemon-agent"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env("PGDAEMON_NODE__LISTEN", "127.0.0.1:8008")
            .output()
            .unwrap()
    };
    let out = check("fencing = [\"http\", \"comand\"]");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a typo passed check-config: {out:?}");
    assert!(stderr.contains("coordinator.fencing") && stderr.contains("unknown fencer \"comand\""), "{stderr}");
    let out = check("fencing = [\"http\", \"command\"]\nfence_command = \"true\"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# hosted coordinator fencers: http, command"), "{stdout}");
}
