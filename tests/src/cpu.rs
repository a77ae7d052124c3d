//! Where a load's CPU time went on this machine (Linux `/proc`): the server under test, the
//! database server's processes, this process (the load generator) and everything else, per
//! request. On a machine whose cores all of them share, what the database server and the load
//! generator take bounds the throughput however little the server itself takes.

use std::collections::HashMap;

/// The CPU time every process and the whole machine had used at one moment, in clock ticks.
pub struct Snapshot {
    /// pid → (command name, user ticks, system ticks).
    processes: HashMap<u32, (String, u64, u64)>,
    /// The machine's busy and idle ticks over all its cores (`/proc/stat`).
    busy: u64,
    idle: u64,
    /// The cores `/proc/stat` counts those ticks over (its `cpuN` lines).
    cores: usize,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut processes = HashMap::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A process can end between the listing and the read.
            if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
                && let Some(times) = process_times(&stat)
            {
                processes.insert(pid, times);
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let (busy, idle) = machine_times(&stat).expect("the `cpu` line of /proc/stat");
        Snapshot {
            processes,
            busy,
            idle,
            cores: cores(&stat),
        }
    }
}

/// `(command, utime, stime)` from a `/proc/PID/stat` line. The command is in parentheses and
/// may itself hold spaces and parentheses, so the fields are counted from the last `)`.
fn process_times(stat: &str) -> Option<(String, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_owned();
    // After the command: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt, utime, stime.
    let mut fields = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((command, user, system))
}

/// `(busy, idle)` ticks from the first (`cpu`) line of `/proc/stat`: user, nice, system, idle,
/// iowait, irq, softirq, steal (guest time is already counted in user and nice).
fn machine_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = line
        .split_ascii_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = t.try_into().ok()?;
    Some((user + nice + system + irq + softirq + steal, idle + iowait))
}

/// The `cpuN` lines of `/proc/stat`: the cores its ticks are counted over.
fn cores(stat: &str) -> usize {
    stat.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// CPU time per request between two snapshots, in microseconds.
pub struct Split {
    pub server_user: f64,
    pub server_system: f64,
    pub database: f64,
    pub client: f64,
    pub other: f64,
    /// The share of the machine's CPU time that was idle.
    pub idle_share: f64,
    /// The machine's cores, as `/proc/stat` counts them.
    pub cores: f64,
}

impl Split {
    /// What `server` (a pid), the processes named `database` and this process used between
    /// `before` and `after`, over `requests`.
    pub fn between(
        before: &Snapshot,
        after: &Snapshot,
        server: u32,
        database: &str,
        requests: usize,
    ) -> Split {
        let tick = 1e6 / ticks_per_second();
        let per_request = |ticks: u64| ticks as f64 * tick / requests.max(1) as f64;
        // A process that started in between (a new database connection) counts from zero; one
        // that ended in between is not seen, which only leaves its time in `other`.
        let used = |pid: &u32| -> (u64, u64) {
            let Some((_, user, system)) = after.processes.get(pid) else {
                return (0, 0);
            };
            let (user0, system0) = before
                .processes
                .get(pid)
                .map_or((0, 0), |(_, u, s)| (*u, *s));
            (user.saturating_sub(user0), system.saturating_sub(system0))
        };
        let (server_user, server_system) = used(&server);
        let database_ticks: u64 = after
            .processes
            .iter()
            .filter(|(_, (command, _, _))| command == database)
            .map(|(pid, _)| {
                let (u, s) = used(pid);
                u + s
            })
            .sum();
        let (client_user, client_system) = used(&std::process::id());
        let client_ticks = client_user + client_system;
        let busy = after.busy.saturating_sub(before.busy);
        let idle = after.idle.saturating_sub(before.idle);
        let named = server_user + server_system + database_ticks + client_ticks;
        Split {
            server_user: per_request(server_user),
            server_system: per_request(server_system),
            database: per_request(database_ticks),
            client: per_request(client_ticks),
            other: per_request(busy.saturating_sub(named)),
            idle_share: idle as f64 / (busy + idle).max(1) as f64,
            cores: after.cores.max(1) as f64,
        }
    }

    /// The requests per second the machine's cores would allow if the server itself took no CPU
    /// time and the database server and load generator took what they did per request.
    pub fn ceiling_without_server(&self) -> f64 {
        self.cores * 1e6 / (self.database + self.client)
    }
}

/// Clock ticks per second, the unit of `/proc`'s CPU times.
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_process_line_whose_command_holds_parentheses() {
        let line = "42 (tokio (w) 1) S 1 42 42 0 -1 4194560 100 0 0 0 731 205 0 0 20 0 9 0";
        assert_eq!(
            process_times(line),
            Some(("tokio (w) 1".to_owned(), 731, 205))
        );
    }

    #[test]
    fn reads_the_machine_line() {
        let stat = "cpu  10 1 5 100 4 2 3 1 0 0\ncpu0 5 0 2 50 2 1 1 0 0 0\n";
        assert_eq!(machine_times(stat), Some((22, 104)));
        assert_eq!(cores(stat), 1);
        assert_eq!(cores("cpu  1 2\ncpu0 1\ncpu1 1\nintr 5\n"), 2);
    }
}
