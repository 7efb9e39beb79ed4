//! The brokers the worker consumes from, chosen by URL scheme as kombu's
//! transport aliases choose them.
//!
//! - [`redis`]: kombu's Redis transport, consumer side (Lua reserve,
//!   heartbeat, restore sweep, reconnect).

pub mod redis;
