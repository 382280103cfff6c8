//! CPU time from `/proc`, to say where a benchmark's cycles went.
//!
//! Linux only; elsewhere every reading is zero. Times are clock ticks
//! (`getconf CLK_TCK`, 100 on Linux). Processes that exit inside a window
//! are still counted through their parent's `cutime`/`cstime`, once the
//! parent has reaped them: pgbench through this process, PostgreSQL
//! backends through the postmaster.

use std::time::Duration;

/// User + system ticks of one process; with `reaped`, also of its waited-for children.
pub fn process_ticks(pid: u32, reaped: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is in parentheses and may contain spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let own = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    let children = fields.get(13).copied().unwrap_or(0) + fields.get(14).copied().unwrap_or(0);
    if reaped { own + children } else { own }
}

/// The postmaster that forked backend `backend_pid` (from `pg_backend_pid()`),
/// when that backend is a PostgreSQL process on this machine.
pub fn postmaster_of(backend_pid: u32) -> Option<u32> {
    let comm = std::fs::read_to_string(format!("/proc/{backend_pid}/comm")).ok()?;
    if comm.trim() != "postgres" {
        return None;
    }
    parent_of(backend_pid)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every tick the PostgreSQL server spent: the postmaster, its live
/// children, and the children it has reaped. `None` while a child has exited
/// but is not reaped yet (a zombie, whose ticks show nowhere), or when one was
/// reaped during the reading: try again.
pub fn server_ticks(postmaster: u32) -> Option<u64> {
    let reaped_before = process_ticks(postmaster, true) - process_ticks(postmaster, false);
    let mut children = 0;
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, parent) = (
            fields.next(),
            fields.next().and_then(|f| f.parse::<u32>().ok()),
        );
        if pid == postmaster || parent != Some(postmaster) {
            continue;
        }
        if state == Some("Z") {
            return None;
        }
        children += process_ticks(pid, false);
    }
    let all = process_ticks(postmaster, true);
    let reaped_after = all - process_ticks(postmaster, false);
    (reaped_before == reaped_after).then_some(all + children)
}

/// Busy and total ticks of the whole machine, summed over every core.
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // user nice system idle iowait irq softirq steal
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// How long one tick lasts.
pub fn tick() -> Duration {
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    Duration::from_secs(1) / hz as u32
}
