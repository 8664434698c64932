//! Each worker thread's Redis calls run on a connection driven by that thread's own runtime
//! (contract §9): no hop to another thread per check, in every topology. Two threads, each
//! with a single-threaded runtime as the gateway's workers have (`work_stealing = false`),
//! call Redis through one `Redis`; then the first thread's runtime ends. Were the threads to
//! share a connection whose driver lives on whichever runtime used it first, the second
//! thread's next call would fail with that runtime gone; each calls on its own instead, and
//! each runtime holds its connection's driver. A third thread, started after the first has
//! ended, makes its own connection too.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::procs::RedisServer;
use common::topologies::{Cluster, Sentinels};
use ratelimiter::config::Config;
use ratelimiter::redis_conn::Redis;

fn redis_for(body: &str) -> Arc<Redis> {
    let config = Config::parse("test.toml", body, &|_| None).expect("config");
    Arc::new(Redis::new(config.redis.as_ref().expect("[redis]")).expect("clients"))
}

/// Sets `key` to `value` on this thread's connection, retrying for a while (the connection
/// is made on first use, and a cluster's slots may still be settling).
async fn set(redis: &Redis, key: &str, value: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match set_once(redis, key, value).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// One call on this thread's connection, with no retry, within 2 s.
async fn set_once(redis: &Redis, key: &str, value: &str) -> Result<(), String> {
    let call = async {
        let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The tasks alive on this thread's runtime: the connection's driver, when it lives here.
fn tasks_here() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn each_thread_calls_on_its_own_runtime(redis: Arc<Redis>) {
    // Thread A makes the first connection and keeps its runtime until told to end.
    let (a_done, a_end) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let a = {
        let redis = redis.clone();
        let (done, end) = (a_done.0, a_end.1);
        thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                set(&redis, "threads:a", "1")
                    .await
                    .expect("thread A's call");
                assert!(
                    tasks_here() >= 1,
                    "thread A's connection is driven elsewhere"
                );
            });
            done.send(()).unwrap();
            end.recv().unwrap();
            drop(rt);
        })
    };
    a_done.1.recv().unwrap();

    // Thread B calls while A's runtime is alive (and parked: a call through A's connection
    // would wait for it), then again after it has ended.
    let (b_ready, b_go) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let b = {
        let redis = redis.clone();
        let (ready, go) = (b_ready.0, b_go.1);
        thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                set(&redis, "threads:b", "1")
                    .await
                    .expect("thread B's first call");
                assert!(
                    tasks_here() >= 1,
                    "thread B's connection is driven elsewhere"
                );
            });
            ready.send(()).unwrap();
            go.recv().unwrap();
            rt.block_on(async {
                for i in 0..50 {
                    set(&redis, "threads:b", &i.to_string())
                        .await
                        .map_err(|e| format!("call {i} after thread A's runtime ended: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
    };
    b_ready.1.recv().unwrap();
    a_end.0.send(()).unwrap();
    a.join().unwrap();
    b_go.0.send(()).unwrap();
    b.join()
        .unwrap()
        .expect("thread B keeps calling on its own connection");

    // Thread C starts after A has ended, and may be handed A's thread-local slot: it makes a
    // connection of its own rather than use one whose runtime is gone.
    let c = thread::spawn(move || {
        runtime().block_on(async {
            set(&redis, "threads:c", "1").await?;
            if tasks_here() == 0 {
                return Err("thread C's connection is driven elsewhere".to_string());
            }
            Ok::<(), String>(())
        })
    });
    c.join()
        .unwrap()
        .expect("a thread started later calls on its own connection");
}

#[test]
fn standalone_calls_stay_on_their_threads_runtime() {
    let server = RedisServer::start();
    each_thread_calls_on_its_own_runtime(redis_for(&format!(
        "[redis]\nurl = \"{}\"\n",
        server.url()
    )));
}

#[test]
fn cluster_calls_stay_on_their_threads_runtime() {
    let cluster = Cluster::start(3);
    each_thread_calls_on_its_own_runtime(redis_for(&format!(
        "[redis]\ncluster = {}\n",
        cluster.seeds()
    )));
}

#[test]
fn sentinel_calls_stay_on_their_threads_runtime() {
    let set = Sentinels::start();
    each_thread_calls_on_its_own_runtime(redis_for(&format!(
        "[redis]\nsentinels = {}\nsentinel_master = \"mymaster\"\n",
        set.urls()
    )));
}
