//! The one reader of a process's CPU time from procfs, for `tidelog bench` and the
//! benchmark scenarios (CPU per message beside every rate).

/// CPU time (user + system) of process `pid` (this process when `None`) so far, in
/// seconds; `None` without procfs or once the process exited.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    cpu_seconds_from_stat(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime of a /proc/<pid>/stat line, in seconds (USER_HZ = 100 on Linux).
pub fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_of_a_stat_line() {
        let stat = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 100 200 0 0";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        assert_eq!(cpu_seconds_from_stat("garbage"), None);
        assert!(cpu_seconds(None).is_none_or(|s| s >= 0.0));
    }
}
