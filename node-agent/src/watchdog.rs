//! Linux watchdog device (`/dev/watchdog`), as Patroni's `watchdog` section: while this agent may
//! act as primary (a valid leader lease, or failsafe acknowledgements), the device is armed and
//! petted; when it may not, it is disarmed with the magic close ('V'). If the whole agent hangs
//! (or the demotion itself does), the pets stop and the kernel resets the host before the
//! primary can outlive its lease by more than the device's timeout.
//!
//! Each pet sets the device to fire no later than half a safety margin after the agent's own
//! lease (or failsafe) deadline: `WDIOC_SETTIMEOUT` with the time left rounded down to whole
//! seconds (the ioctl also pings). So a host whose agent died just after a pet is reset before
//! anyone may take the lease over (that is `safety_margin_ms` after the holder's deadline, S2),
//! not a full lease later; and a healthy agent has demoted (and disarmed) at its deadline, before
//! the device fires. When less than a second is left nothing is petted: the last setting already
//! fires in time. A path that is not a watchdog (tests use a regular file that records the pets)
//! refuses the ioctl: `automatic` carries on with plain pets and says so, `required` refuses to
//! arm.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[watchdog]` in the agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default)]
    pub mode: WatchdogMode,
    /// The device; `/dev/watchdog` by default.
    #[serde(default = "default_device")]
    pub device: PathBuf,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig { mode: WatchdogMode::Off, device: default_device() }
    }
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}

/// Patroni's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogMode {
    /// Never touch a device (the default).
    #[default]
    Off,
    /// Use the device when it can be armed; carry on without it otherwise (logged).
    Automatic,
    /// Arming must succeed, timeout included: the agent refuses to start otherwise.
    Required,
}

/// Why the watchdog could not be armed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog {device}: cannot open: {source}")]
    Open { device: String, source: std::io::Error },
    #[error("watchdog {device}: cannot set the timeout to {secs} s: {source}")]
    Timeout { device: String, secs: u64, source: std::io::Error },
    #[error("watchdog {device}: write failed: {source}")]
    Write { device: String, source: std::io::Error },
}

/// `_IOWR('W', 6, int)` from linux/watchdog.h.
const WDIOC_SETTIMEOUT: u64 = 0xC004_5706;

/// The device, armed while `file` is open.
pub struct Watchdog {
    config: WatchdogConfig,
    file: Option<File>,
    /// The timeout last set on the open device, in seconds (`None`: the driver's own applies).
    timeout_set: Option<u64>,
}

/// The device timeout for a pet now: the whole seconds until half a safety margin past the
/// agent's deadline (`left` from now); `None` when that is under a second (do not pet).
pub fn pet_timeout(left: Duration, safety_margin: Duration) -> Option<u64> {
    Some((left + safety_margin / 2).as_secs()).filter(|s| *s >= 1)
}

impl Watchdog {
    pub fn new(config: WatchdogConfig) -> Self {
        Watchdog { config, file: None, timeout_set: None }
    }

    pub fn is_armed(&self) -> bool {
        self.file.is_some()
    }

    /// Start-up check for `required`: the device can be opened and takes the timeout. Leaves
    /// it disarmed (magic close).
    pub fn check(&mut self, timeout: Duration) -> Result<(), WatchdogError> {
        if self.config.mode == WatchdogMode::Off {
            return Ok(());
        }
        self.arm(timeout)?;
        self.disarm();
        Ok(())
    }

    /// One call per check: while the agent may lead for `left` more, arm and pet so that the
    /// device fires by [`pet_timeout`]; otherwise disarm (magic close).
    pub fn update(&mut self, left: Option<Duration>, safety_margin: Duration) -> Result<(), WatchdogError> {
        if self.config.mode == WatchdogMode::Off {
            return Ok(());
        }
        let Some(left) = left else {
            self.disarm();
            return Ok(());
        };
        let Some(secs) = pet_timeout(left, safety_margin) else {
            return Ok(()); // the last pet's setting fires in time
        };
        if self.file.is_none() {
            return self.arm(Duration::from_secs(secs));
        }
        if self.timeout_set.is_some_and(|set| set != secs) {
            // Setting the timeout also pings.
            return self.set_timeout(secs);
        }
        self.pet()
    }

    fn device(&self) -> String {
        self.config.device.display().to_string()
    }

    fn arm(&mut self, timeout: Duration) -> Result<(), WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.config.device)
            .map_err(|source| WatchdogError::Open { device: self.device(), source })?;
        let secs = timeout.as_secs().max(1);
        self.file = Some(file);
        match self.ioctl_set_timeout(secs) {
            Ok(()) => tracing::info!(device = %self.device(), timeout_s = secs, "watchdog armed"),
            Err(source) if self.config.mode == WatchdogMode::Required => {
                self.disarm();
                return Err(WatchdogError::Timeout { device: self.device(), secs, source });
            }
            Err(source) => {
                tracing::warn!(device = %self.device(), secs, error = %source, "watchdog armed without setting its timeout (the driver's own applies)");
            }
        }
        self.pet()
    }

    fn set_timeout(&mut self, secs: u64) -> Result<(), WatchdogError> {
        self.ioctl_set_timeout(secs).map_err(|source| WatchdogError::Timeout { device: self.device(), secs, source })
    }

    /// `WDIOC_SETTIMEOUT`; records the value on success.
    fn ioctl_set_timeout(&mut self, secs: u64) -> std::io::Result<()> {
        let Some(file) = self.file.as_ref() else { return Ok(()) };
        let mut value: libc::c_int = secs as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer, which points to
        // a live local; the fd is open for the duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut value as *mut libc::c_int) };
        if rc != 0 {
            self.timeout_set = None;
            return Err(std::io::Error::last_os_error());
        }
        self.timeout_set = Some(secs);
        Ok(())
    }

    fn pet(&mut self) -> Result<(), WatchdogError> {
        let device = self.device();
        if let Some(f) = self.file.as_mut() {
            f.write_all(b"1").and_then(|_| f.flush()).map_err(|source| WatchdogError::Write { device, source })?;
        }
        Ok(())
    }

    /// Magic close: 'V' then close tells the driver this stop is deliberate.
    pub fn disarm(&mut self) {
        if let Some(mut f) = self.file.take() {
            if let Err(e) = f.write_all(b"V").and_then(|_| f.flush()) {
                tracing::error!(device = %self.device(), error = %e, "watchdog magic close failed; the host may be reset");
            } else {
                tracing::info!(device = %self.device(), "watchdog disarmed");
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    //! Against a regular file that records what was written: never a real watchdog device.
    use super::*;

    fn fake() -> (tempfile::TempDir, WatchdogConfig) {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("fake-watchdog");
        std::fs::write(&device, b"").unwrap();
        assert!(!device.starts_with("/dev"), "tests never touch a real device");
        (dir, WatchdogConfig { mode: WatchdogMode::Automatic, device })
    }

    const T: Duration = Duration::from_secs(8);
    const M: Duration = Duration::from_secs(2);

    #[test]
    fn the_device_fires_by_half_a_margin_after_the_deadline() {
        assert_eq!(pet_timeout(Duration::from_millis(7_900), M), Some(8), "7.9 s left + 1 s");
        assert_eq!(pet_timeout(Duration::from_millis(200), M), Some(1));
        assert_eq!(pet_timeout(Duration::from_millis(400), Duration::from_millis(1_000)), None, "0.9 s: no pet");
    }

    #[test]
    fn no_pet_once_less_than_a_second_is_left() {
        let (_dir, cfg) = fake();
        let mut w = Watchdog::new(cfg.clone());
        w.update(Some(T), M).unwrap();
        w.update(Some(Duration::from_millis(100)), Duration::from_millis(500)).unwrap();
        assert!(w.is_armed(), "still armed: the device must fire if the demotion hangs");
        assert_eq!(std::fs::read_to_string(&cfg.device).unwrap(), "1");
    }

    #[test]
    fn armed_and_petted_only_while_leading_then_magic_closed() {
        let (_dir, cfg) = fake();
        let mut w = Watchdog::new(cfg.clone());
        w.update(None, M).unwrap();
        assert!(!w.is_armed(), "nothing to supervise before the lease is held");
        for _ in 0..3 {
            w.update(Some(T), M).unwrap();
        }
        assert!(w.is_armed());
        w.update(None, M).unwrap();
        assert!(!w.is_armed());
        assert_eq!(std::fs::read_to_string(&cfg.device).unwrap(), "111V");
    }

    #[test]
    fn off_never_opens_the_device() {
        let cfg = WatchdogConfig { mode: WatchdogMode::Off, device: PathBuf::from("/nonexistent/watchdog") };
        let mut w = Watchdog::new(cfg);
        w.update(Some(T), M).unwrap();
        assert!(!w.is_armed());
        w.check(T).unwrap();
    }

    #[test]
    fn required_refuses_a_device_that_takes_no_timeout_automatic_carries_on() {
        let (_dir, cfg) = fake();
        let mut req = Watchdog::new(WatchdogConfig { mode: WatchdogMode::Required, ..cfg.clone() });
        assert!(matches!(req.check(T), Err(WatchdogError::Timeout { .. })));
        assert!(!req.is_armed());
        let mut auto = Watchdog::new(cfg.clone());
        auto.check(T).unwrap();
        let missing = WatchdogConfig { mode: WatchdogMode::Required, device: cfg.device.with_file_name("absent") };
        assert!(matches!(Watchdog::new(missing).check(T), Err(WatchdogError::Open { .. })));
    }

    #[test]
    fn dropping_an_armed_watchdog_disarms_it() {
        let (_dir, cfg) = fake();
        {
            let mut w = Watchdog::new(cfg.clone());
            w.update(Some(T), M).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&cfg.device).unwrap(), "1V");
    }

    #[test]
    fn config_parses_patroni_modes_and_rejects_unknown_ones() {
        let c: WatchdogConfig = toml::from_str("mode = \"required\"\ndevice = \"/dev/watchdog1\"").unwrap();
        assert_eq!(c.mode, WatchdogMode::Required);
        assert_eq!(c.device, PathBuf::from("/dev/watchdog1"));
        assert_eq!(toml::from_str::<WatchdogConfig>("").unwrap(), WatchdogConfig::default());
        assert!(toml::from_str::<WatchdogConfig>("mode = \"sometimes\"").is_err());
        assert!(toml::from_str::<WatchdogConfig>("mode = \"off\"\ntimeout = 3").is_err());
    }
}
