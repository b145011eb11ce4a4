//! Fault points at every side-effect boundary, for crash-consistency tests.
//!
//! Compiled in only with the `failpoints` feature (the test command enables it); without
//! it [`hit`] is an empty inline function. With it, `BERTH_FAILPOINTS` names the points
//! and what happens there: `name=kill` (SIGKILL the process, as a crash or power loss
//! would), `name=error` (the operation fails with EIO), `name=panic`, or `name=sleep(MS)`;
//! `name=kill@N` kills at the Nth time the point is reached; several separated by `;`. `BERTH_FAILPOINT_LOG=FILE` appends the name of every point
//! reached, so a test can enumerate them.

use std::io;

/// Passes the named point: returns an error or ends the process when a test asks for it.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) -> io::Result<()> {
    Ok(())
}

/// Passes the named point: returns an error or ends the process when a test asks for it.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) -> io::Result<()> {
    use std::io::Write;
    if let Some(log) = std::env::var_os("BERTH_FAILPOINT_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log)
    {
        let _ = writeln!(f, "{name}");
    }
    let Ok(spec) = std::env::var("BERTH_FAILPOINTS") else {
        return Ok(());
    };
    let count = {
        static HITS: std::sync::Mutex<Option<std::collections::HashMap<&'static str, u64>>> =
            std::sync::Mutex::new(None);
        let mut hits = HITS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = hits.get_or_insert_with(Default::default).entry(name).or_insert(0);
        *n += 1;
        *n
    };
    for entry in spec.split(';') {
        let Some((point, action)) = entry.split_once('=') else { continue };
        if point.trim() != name {
            continue;
        }
        let action = match action.trim().split_once('@') {
            Some((action, nth)) if nth.parse::<u64>().ok() == Some(count) => action,
            Some(_) => continue,
            None => action.trim(),
        };
        match action {
            "kill" => {
                tracing::warn!(failpoint = name, "failpoint: killing the process");
                // SAFETY: raising SIGKILL on ourselves has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
            "error" => return Err(io::Error::other(format!("failpoint {name} injected an error"))),
            "panic" => panic!("failpoint {name} injected a panic"),
            other => {
                if let Some(ms) =
                    other.strip_prefix("sleep(").and_then(|s| s.strip_suffix(')')).and_then(|s| s.parse().ok())
                {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn error_and_sleep_actions() {
        // SAFETY: tests in this module are the only ones touching this variable.
        unsafe { std::env::set_var("BERTH_FAILPOINTS", "a.b=error;c=sleep(1)") };
        assert!(hit("a.b").is_err());
        assert!(hit("c").is_ok());
        assert!(hit("other").is_ok());
        // SAFETY: as above; the variable is this module's test's alone.
        unsafe { std::env::remove_var("BERTH_FAILPOINTS") };
    }
}
