//! How a fleet declares its AMQP queues, as the Python side configures
//! them: one [`QueueFlags`], flattened into `worker`, `submit` and `run`
//! (with `--broker`). A producer declares the queue it publishes to, so it
//! must declare it as the fleet does, or RabbitMQ refuses the declaration
//! (`PRECONDITION_FAILED`). Redis has no declarations: the flags change
//! nothing there.

use billiard_host::celery::transport::{delayed, ExchangeKind, QueueOptions};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct QueueFlags {
    /// AMQP: declare the queues with `x-max-priority` N (Celery's
    /// task_queue_max_priority; 1-255, as the Python workers sharing them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub queue_max_priority: Option<u8>,
    /// AMQP: declare the queues as quorum queues (Celery's
    /// task_default_queue_type = "quorum"); a worker also sets up Celery
    /// 5.5+'s native delayed delivery as Celery's worker does with them (the
    /// celery_delayed_* exchanges and queues; the queues bound to
    /// celery_delayed_delivery when --exchange-type is topic or fanout).
    #[arg(long)]
    pub quorum_queues: bool,
    /// AMQP: the type of each queue's exchange, as the fleet's
    /// task_default_exchange_type: direct (Celery's default), topic or
    /// fanout. Native delayed delivery needs topic or fanout.
    #[arg(long, value_name = "TYPE", default_value = "direct")]
    pub exchange_type: ExchangeKind,
    /// AMQP with --quorum-queues: the type of the celery_delayed_* queues, as the
    /// fleet's broker_native_delayed_delivery_queue_type: quorum (Celery's default)
    /// or classic.
    #[arg(long, value_name = "TYPE", default_value = "quorum")]
    pub delayed_delivery_queue_type: delayed::QueueType,
}

impl QueueFlags {
    /// The declarations these flags ask for (prefetch and the consumer
    /// timeout are the worker's own).
    pub fn options(&self) -> QueueOptions {
        QueueOptions {
            max_priority: self.queue_max_priority,
            quorum: self.quorum_queues,
            exchange_type: self.exchange_type,
            delayed_queue_type: self.delayed_delivery_queue_type,
            ..QueueOptions::default()
        }
    }

    /// Whether any flag differs from its default (`run` without
    /// `--broker` refuses them: there is no queue to declare).
    pub fn any_set(&self) -> bool {
        self.queue_max_priority.is_some()
            || self.quorum_queues
            || self.exchange_type != ExchangeKind::default()
            || self.delayed_delivery_queue_type != delayed::QueueType::default()
    }
}
