//! The abuse figures of issue 10 (`--report`).

pub async fn run() {}
