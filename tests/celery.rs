//! The Celery tests in one binary (see tests/integration.rs for the
//! layout): each tests/celery_*.rs file is a module, run against a real
//! redis-server and Python Celery 5.7 (tests/common/celery.rs). One file's
//! tests: `cargo test -p billiard-host --test celery -- celery_redis::`.

mod common;

// The worker on RabbitMQ (issue 25): a private rabbitmq-server node per
// test, Python Celery 5.7 clients, celery inspect/control, a Python worker.
mod celery_amqp;
// More of the worker on RabbitMQ (issue 25): native delayed delivery on a
// quorum-queue fleet, add_consumer/cancel_consumer, /healthz.
mod celery_amqp_more;
// Chords and nested canvases from Python Celery 5.7 run on our workers
// (issue 23 items 1 and 6).
mod celery_chord;
// The Celery producer side (Client, submit, run --broker) against a real
// redis-server, Python Celery where it matters.
mod celery_client;
// A fleet on one Redis: leases across hosts with different visibility
// timeouts, Python workers and kombu's sweeper, stores Redis refuses,
// signals and stalls (issue 22: C7, C8, C15).
mod celery_fleet;
// Hostile Celery messages: odd or out-of-range headers get one answer each
// (C4, C1), a dead pool stops the worker (C1), submit's bounds (C9).
mod celery_hostile;
mod celery_k29_args;
// Celery's built-in tasks (celery.group, celery.chord, celery.map, ...) run
// by the worker itself, compared with a Python worker (issue 29 item 3).
mod celery_k29_builtins;
// Revoke (AsyncResult.revoke, revoke_by_stamped_headers) and inspect
// (registered items, conf, report, scheduled) compared with a Python Celery
// 5.7 worker's (issue 29 items 6 and 7).
mod celery_k29_control;
// kombu's typed JSON: bytes/datetime/uuid/Decimal arguments and bytes
// results against a Python worker (issue 29 item 5).
mod celery_k29_json;
// Operating the fleet: remote control, events, Flower, metrics, health
// against a real redis-server and the real celery/flower tools.
mod celery_ops;
// ctx.progress as Celery's PROGRESS state, seen by a real Python client.
mod celery_progress;
mod celery_rate;
// The Celery worker mode against a real redis-server and real Python
// Celery.
mod celery_redis;
// Retry, Reject, Ignore and the poison-message cap on the Celery wire, from
// a real Python Celery 5.7 client (issue 23 items 2, 3 and 5).
mod celery_retry;
// Redis Sentinel: three local sentinels, the master killed mid-batch
// (issue 25).
mod celery_sentinel;
