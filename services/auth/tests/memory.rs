//! What password checking makes a process hold, measured on this test's own
//! process: a burst of concurrent logins may take at most one Argon2
//! working memory per hashing slot, and no more once it is over.

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_concurrent_logins_hold_one_working_memory_per_hashing_slot() {
    let before = rss_mib();
    for _ in 0..2 {
        let mut logins = tokio::task::JoinSet::new();
        for n in 0..128 {
            logins.spawn(grantmesh_auth::verify_password(format!("guess {n}"), None));
        }
        for login in logins.join_all().await {
            assert!(!login.expect("within the waiting bound"));
        }
    }
    // 19 MiB each (Argon2's default memory cost), and room for the rest.
    let bound = (grantmesh_auth::MAX_CONCURRENT_HASHES as u64 + 2) * 20;
    let grown = rss_mib().saturating_sub(before);
    assert!(
        grown <= bound,
        "256 logins left the process {grown} MiB larger (bound {bound} MiB)"
    );
}
