//! Process states from `kill(pid, 0)` and `/proc` (Linux; elsewhere a process that exists is
//! `Unknown`), for telling a running postmaster from one that was killed and not yet reaped.

pub enum State {
    Alive,
    /// Exited, not yet reaped by `parent`.
    Zombie {
        parent: u32,
    },
    Gone,
    Unknown,
}

pub fn state(pid: u32) -> State {
    // kill(pid, 0) fails with ESRCH only when no such process exists, zombies included; EPERM
    // (another user's process) means it exists. /proc may hide other users' processes (hidepid),
    // so a missing /proc entry alone proves nothing.
    // SAFETY: signal 0 delivers nothing; it only checks that the PID exists.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return State::Gone;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return State::Unknown };
    // `pid (comm) S ppid ...`: comm may contain spaces and parentheses, so split after the last ')'.
    let mut fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace();
    match (fields.next(), fields.next().and_then(|p| p.parse().ok())) {
        (Some("Z" | "X"), Some(parent)) => State::Zombie { parent },
        (Some(_), _) => State::Alive,
        (None, _) => State::Unknown,
    }
}

/// Reaps an exited child of this process (the agent is the parent, or the subreaper, of the
/// postmasters it started when it runs as a container's init).
pub fn reap(pid: u32) {
    // SAFETY: waitpid on one PID that /proc shows as our zombie child; WNOHANG never blocks.
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
}

/// This process's OS user name (`getpwuid_r`), if it has one.
pub fn current_user() -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `user_ids`; `pw_name` points into `buf`, read before `buf` is dropped.
    let rc = unsafe { libc::getpwuid_r(libc::getuid(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return None;
    }
    Some(unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

/// The uid and gid of an OS user (`getpwnam_r`), for files the Postgres tools must read.
pub fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new(user).map_err(|_| format!("OS user {user:?}: not a valid name"))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives `pwd`'s string fields, which are
    // not read.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("OS user {user:?} does not exist"));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// Server processes working in `data_dir` (a postmaster's children have it as their working
/// directory and `postgres` as their name). With no postmaster running they are what a dead one
/// left behind, and a new postmaster refuses to start while they hold its shared memory (e.g.
/// the archiver still waiting for an `archive_command`).
pub fn server_processes_in(data_dir: &std::path::Path) -> Vec<u32> {
    let Ok(dir) = data_dir.canonicalize() else { return Vec::new() };
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "postgres"))
        .collect()
}

/// The running archive commands of the server in `data_dir`: the children of its archiver.
pub fn archive_commands(data_dir: &std::path::Path) -> Vec<u32> {
    let is_archiver =
        |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"postgres: archiver"));
    let archivers: Vec<u32> = server_processes_in(data_dir).into_iter().filter(|p| is_archiver(*p)).collect();
    if archivers.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent(*pid).is_some_and(|p| archivers.contains(&p)))
        .collect()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The PID on the first line of a Postgres lock file (`postmaster.pid`, a socket's `.lock`).
pub fn lock_file_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
}

/// Removes the socket lock file of a postmaster that exited (`.s.PGSQL.<port>.lock` in a socket
/// directory) and its socket, returning the dead PID. A new postmaster refuses to start while
/// such a lock names a PID that exists, and a zombie exists until its parent reaps it, which an
/// init that does not reap (some containers) never does. The data directory's `postmaster.pid`
/// goes with the directory on a re-clone, this one does not. A lock naming a live process, or
/// one that cannot be read, is left alone.
pub fn remove_stale_socket_lock(socket_dir: &std::path::Path, port: u16) -> Option<u32> {
    let lock = socket_dir.join(format!(".s.PGSQL.{port}.lock"));
    let pid = lock_file_pid(&lock)?;
    if !matches!(state(pid), State::Zombie { .. } | State::Gone) {
        return None;
    }
    std::fs::remove_file(&lock).ok()?;
    let _ = std::fs::remove_file(socket_dir.join(format!(".s.PGSQL.{port}")));
    Some(pid)
}

/// SIGKILL to `pid`.
pub fn kill(pid: u32) {
    // SAFETY: sends a signal; a PID that is gone meanwhile only makes the call fail.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Kills what a dead postmaster left running in `data_dir` (Patroni does the same), waiting up
/// to `wait` for it to go: a new postmaster, or pg_rewind's single-user recovery, would refuse to
/// start beside it.
pub async fn kill_orphaned_server_processes(data_dir: &std::path::Path, wait: std::time::Duration) -> Result<(), String> {
    let orphans = server_processes_in(data_dir);
    if orphans.is_empty() {
        return Ok(());
    }
    tracing::warn!(?orphans, "killing server processes the dead postmaster left behind");
    orphans.iter().for_each(|pid| kill(*pid));
    let deadline = std::time::Instant::now() + wait;
    while !server_processes_in(data_dir).is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(format!("processes {orphans:?} of the dead postmaster still run after SIGKILL"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_lock_of_an_exited_postmaster_goes_and_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".s.PGSQL.5999.lock");
        let socket = dir.path().join(".s.PGSQL.5999");
        // An exited child not yet reaped: a zombie, as a killed postmaster under a non-reaping init.
        #[allow(clippy::zombie_processes)] // the zombie is the point; reaped below
        let child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(state(zombie), State::Zombie { .. }) {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::write(&lock, format!("{zombie}\n/data\n")).unwrap();
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(remove_stale_socket_lock(dir.path(), 5999), Some(zombie));
        assert!(!lock.exists() && !socket.exists());
        reap(zombie);
        // A running process's lock, and no lock at all, are left alone.
        std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(remove_stale_socket_lock(dir.path(), 5999), None);
        assert!(lock.exists());
        assert_eq!(remove_stale_socket_lock(dir.path(), 6000), None);
    }

    #[test]
    fn tells_a_running_process_from_an_unreaped_and_a_reaped_one() {
        assert!(matches!(state(std::process::id()), State::Alive));
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: once it exits it stays a zombie of this process.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match state(pid) {
                State::Zombie { parent } => {
                    assert_eq!(parent, std::process::id());
                    break;
                }
                State::Alive => assert!(std::time::Instant::now() < deadline, "`true` did not exit"),
                _ => panic!("an unreaped child must be a zombie"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        reap(pid);
        assert!(matches!(state(pid), State::Gone));
        drop(child);
    }
}
