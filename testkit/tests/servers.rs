//! The servers testkit starts are real, restartable, and never outlive the test binary.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Connection;
use switchboard_testkit::{Nats, Postgres};

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; only a running or sleeping process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

fn accepts_tcp(url: &str) -> bool {
    let addr = url.trim_start_matches("nats://");
    std::net::TcpStream::connect(addr).is_ok()
}

#[test]
fn nats_restarts_on_the_same_port() {
    let mut nats = Nats::start().unwrap();
    let url = nats.url();
    assert!(accepts_tcp(&url));
    nats.stop();
    assert!(!accepts_tcp(&url), "stopped server still accepts");
    nats.start_again().unwrap();
    assert!(accepts_tcp(&url));
    assert_eq!(nats.url(), url);
}

#[tokio::test]
async fn postgres_gives_fresh_migrated_databases() {
    let pg = Postgres::start().unwrap();
    let a = pg.database().await.unwrap();
    let b = pg.database().await.unwrap();
    assert_ne!(a, b);
    let mut conn = sqlx::PgConnection::connect(&a).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'switchboard'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        tables >= 7,
        "expected the switchboard tables, found {tables}"
    );
}

/// Run as a child: starts both servers, prints their pids, then dies without unwinding.
#[test]
fn child_that_aborts() {
    if std::env::var_os("TESTKIT_ABORT_CHILD").is_none() {
        return;
    }
    let nats = Nats::start().unwrap();
    let pg = Postgres::start().unwrap();
    println!("PIDS {} {}", nats.pid().unwrap(), pg_pid(&pg));
    std::process::abort();
}

fn pg_pid(pg: &Postgres) -> u32 {
    let url = pg.url("postgres");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        // The postmaster is the parent of this backend.
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(1).unwrap().parse().unwrap()
    })
}

#[test]
fn servers_die_with_a_test_binary_that_aborts() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_that_aborts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TESTKIT_ABORT_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PIDS ").map(|(_, pids)| pids.trim()))
        .unwrap_or_else(|| {
            panic!(
                "child printed no pids: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let pids: Vec<u32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "servers {pids:?} outlived their test binary"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The System V segment of a cluster (`postmaster.pid`, seventh line: key and id).
fn segment_of(pg: &Postgres) -> libc::c_int {
    let url = pg.url("postgres");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pid_file: String = rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT pg_read_file('postmaster.pid')")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    });
    let line = pid_file
        .lines()
        .nth(6)
        .expect("postmaster.pid names its segment");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn segment_exists(shmid: libc::c_int) -> bool {
    // SAFETY: IPC_STAT writes into the zeroed struct we own.
    unsafe {
        let mut info: libc::shmid_ds = std::mem::zeroed();
        libc::shmctl(shmid, libc::IPC_STAT, &mut info) == 0
    }
}

/// A cluster's System V shared memory segment goes with it, whether it is dropped running
/// or after a crash (`stop`, SIGKILL): each one left behind counts against the machine's
/// 4,096 (`kernel.shmmni`), after which no PostgreSQL starts at all.
#[test]
fn a_cluster_leaves_no_shared_memory_segment_behind() {
    for crash_first in [false, true] {
        let mut pg = Postgres::start().unwrap();
        let shmid = segment_of(&pg);
        assert!(segment_exists(shmid));
        if crash_first {
            pg.stop();
            assert!(
                segment_exists(shmid),
                "a killed postmaster leaves its segment"
            );
        }
        drop(pg);
        let deadline = Instant::now() + Duration::from_secs(5);
        while segment_exists(shmid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !segment_exists(shmid),
            "segment {shmid} left behind (crash first: {crash_first})"
        );
    }
}
