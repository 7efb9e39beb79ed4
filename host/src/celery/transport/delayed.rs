//! Celery 5.5+'s native delayed delivery on RabbitMQ (issue 25 item 3).
//!
//! On a quorum-queue fleet, Celery's producer sends a countdown/ETA task
//! (when its queue's exchange is not direct) to the `celery_delayed_27`
//! topic exchange with a routing key of the delay's 28 bits, most
//! significant first, then the task's routing key
//! (`0.0.[...].1.0.celery`). Each level `N` is a topic exchange and a
//! queue of the same name holding messages 2^N seconds (`x-message-ttl`)
//! before dead-lettering them to level `N-1`; a message whose bit `N` is 0
//! skips level `N`'s queue through an exchange-to-exchange binding. Level
//! 0 ends in the `celery_delayed_delivery` topic exchange, bound to each
//! task queue's exchange with `#.<routing key>`, and the queue to its
//! exchange with the same key.
//!
//! The worker declares all of this at start, as Celery's `DelayedDelivery`
//! bootstep does when any of its queues is a quorum queue (kombu's
//! `declare_native_delayed_delivery_exchanges_and_queues` and
//! `bind_queue_to_native_delayed_delivery_exchange`, with Celery's default
//! `broker_native_delayed_delivery_queue_type = "quorum"`); the same
//! names, types and arguments (py-amqp's integer widths too), so a Python
//! worker re-declaring them meets no `PRECONDITION_FAILED`. A direct
//! exchange cannot take the `#.` binding: kombu skips it with a warning,
//! and Celery's producer then sends countdown tasks straight to the
//! queue, held by the worker until their ETA.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// Bits of delay the routing key carries (kombu's
/// `MAX_NUMBER_OF_BITS_TO_USE`): up to 2^28 - 1 seconds.
pub const BITS: u32 = 28;

/// Where level 0 delivers (kombu's `CELERY_DELAYED_DELIVERY_EXCHANGE`).
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

/// The type of the `celery_delayed_*` queues (Celery's
/// `broker_native_delayed_delivery_queue_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Celery's default.
    #[default]
    Quorum,
    /// Classic queues.
    Classic,
}

impl QueueType {
    /// Its `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<QueueType, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            other => Err(format!("`{other}` is not a queue type: quorum or classic")),
        }
    }
}

/// The exchange and queue of delay level `level`: `celery_delayed_{level}`.
pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// One declaration of the delayed-delivery topology, in kombu's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A durable topic exchange.
    Exchange(String),
    /// A durable queue with `args`, bound to the exchange of the same
    /// name with `routing_key`.
    Queue {
        /// Its name (and its exchange's).
        name: String,
        /// Its arguments.
        args: FieldTable,
        /// Its binding's routing key.
        routing_key: String,
    },
    /// An exchange-to-exchange binding.
    Bind {
        /// The exchange messages go to.
        destination: String,
        /// The exchange they come from.
        source: String,
        /// The binding's pattern.
        routing_key: String,
    },
}

/// An integer as py-amqp writes a Python int: signed 32 bits when it fits,
/// else signed 64.
fn py_int(v: i64) -> AMQPValue {
    match i32::try_from(v) {
        Ok(i) if i != i32::MIN => AMQPValue::LongInt(i),
        _ => AMQPValue::LongLongInt(v),
    }
}

/// The arguments of level `level`'s queue.
fn level_args(level: u32, queue_type: &str) -> FieldTable {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let ttl_ms = 1i64
        .checked_shl(level)
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(i64::MAX);
    let dead_letter = match level.checked_sub(1) {
        Some(next) => level_name(next),
        None => DELIVERY_EXCHANGE.to_string(),
    };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text(queue_type));
    args.insert("x-overflow".into(), text("reject-publish"));
    args.insert("x-message-ttl".into(), py_int(ttl_ms));
    args.insert("x-dead-letter-exchange".into(), text(&dead_letter));
    if queue_type == "quorum" {
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    }
    args
}

/// kombu's `declare_native_delayed_delivery_exchanges_and_queues(conn,
/// queue_type)`, step by step.
pub fn topology(queue_type: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut key = "1.#".to_string();
    for level in (0..BITS).rev() {
        steps.push(Step::Exchange(level_name(level)));
        steps.push(Step::Queue {
            name: level_name(level),
            args: level_args(level, queue_type),
            routing_key: key.clone(),
        });
        key = format!("*.{key}");
    }
    let mut key = "0.#".to_string();
    for level in (1..BITS).rev() {
        steps.push(Step::Bind {
            destination: level_name(level.saturating_sub(1)),
            source: level_name(level),
            routing_key: key.clone(),
        });
        key = format!("*.{key}");
    }
    steps.push(Step::Exchange(DELIVERY_EXCHANGE.into()));
    steps.push(Step::Bind {
        destination: DELIVERY_EXCHANGE.into(),
        source: level_name(0),
        routing_key: key,
    });
    steps
}

/// The pattern a task queue is bound with to take delayed messages for
/// `routing_key` (kombu: `#.<key>`, unless it starts with `#`).
pub fn binding_key(routing_key: &str) -> String {
    if routing_key.starts_with('#') {
        routing_key.to_string()
    } else {
        format!("#.{routing_key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_kombus() {
        let steps = topology("quorum");
        // 28 exchanges + 28 queues, 27 level-to-level bindings, the
        // delivery exchange and its binding.
        assert_eq!(steps.len(), 28 * 2 + 27 + 2);
        let Step::Queue {
            name,
            args,
            routing_key,
        } = &steps[1]
        else {
            panic!("{:?}", steps[1]);
        };
        assert_eq!(name, "celery_delayed_27");
        assert_eq!(routing_key, "1.#");
        let a = args.inner();
        // 2^27 s in ms does not fit 32 bits: py-amqp's 'L'.
        assert_eq!(
            a.get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(134_217_728_000))
        );
        assert_eq!(
            a.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("celery_delayed_26".into()))
        );
        assert_eq!(
            a.get("x-dead-letter-strategy"),
            Some(&AMQPValue::LongString("at-least-once".into()))
        );
        let Step::Queue {
            name,
            args,
            routing_key,
        } = &steps[55]
        else {
            panic!("{:?}", steps[55]);
        };
        assert_eq!(name, "celery_delayed_0");
        assert_eq!(routing_key, &format!("{}1.#", "*.".repeat(27)));
        assert_eq!(
            args.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongInt(1000))
        );
        assert_eq!(
            args.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString(DELIVERY_EXCHANGE.into()))
        );
        assert_eq!(
            steps[56],
            Step::Bind {
                destination: "celery_delayed_26".into(),
                source: "celery_delayed_27".into(),
                routing_key: "0.#".into(),
            }
        );
        assert_eq!(
            steps.last(),
            Some(&Step::Bind {
                destination: DELIVERY_EXCHANGE.into(),
                source: "celery_delayed_0".into(),
                routing_key: format!("{}0.#", "*.".repeat(27)),
            })
        );
        let classic = topology("classic");
        let Step::Queue { args, .. } = &classic[1] else {
            panic!("{:?}", classic[1]);
        };
        assert!(args.inner().get("x-dead-letter-strategy").is_none());
        assert_eq!(binding_key("celery"), "#.celery");
        assert_eq!("Classic".parse(), Ok(QueueType::Classic));
        assert_eq!(QueueType::default().as_str(), "quorum");
        assert!("stream".parse::<QueueType>().is_err());
        assert_eq!(binding_key("#.x"), "#.x");
    }
}
