//! The `apply` and `map` family: one job or a batch of them, raw or typed,
//! waited for or not.

use std::marker::PhantomData;
use std::sync::Arc;

use billiard_plugin_api::{codec, Codec};
use serde::{de::DeserializeOwned, Serialize};

use super::job::{Dispatch, Reply, ResultSlot};
use super::*;

impl Pool {
    /// Submits one job with encoded arguments; the building block of the
    /// typed `apply*` methods and of the CLI.
    pub fn apply_raw(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
    ) -> Result<RawResult, TaskError> {
        self.apply_raw_choice(target, codec, args, limits, None, &retry::Choice::Pool)
    }

    /// Like [`Pool::apply_raw`], and `then` runs with the outcome on the
    /// pool's callback thread as soon as it is known (no thread per job).
    /// `then` is not run if the pool shuts down before the job is done
    /// (the handle still reports `terminated`).
    pub fn apply_raw_then(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        then: impl FnOnce(&Outcome) + Send + 'static,
    ) -> Result<RawResult, TaskError> {
        let then: job::Callback = Box::new(then);
        self.apply_raw_choice(
            target,
            codec,
            args,
            limits,
            Some(then),
            &retry::Choice::Pool,
        )
    }

    /// Like [`Pool::apply_raw_then`] (`then` optional), with this job's own
    /// retry policy (`None`: never retried), in place of the pool's
    /// ([`PoolBuilder::retry_policy`]): `max_retries` then caps the retries
    /// a task asks for too.
    pub fn apply_raw_retrying(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        retry: Option<crate::retry::RetryPolicy>,
        then: Option<job::Callback>,
    ) -> Result<RawResult, TaskError> {
        let choice = match retry {
            Some(p) => retry::Choice::Exactly(p),
            None => retry::Choice::Off,
        };
        self.apply_raw_choice(target, codec, args, limits, then, &choice)
    }

    /// The retry rule of a job (or a stream's jobs) that chose `choice`.
    pub(crate) fn retry_rule(&self, choice: &retry::Choice) -> Option<Arc<retry::Rule>> {
        match choice {
            retry::Choice::Pool => self.default_retry.clone(),
            retry::Choice::Off => None,
            retry::Choice::Exactly(p) => Some(retry::Rule::exactly(p.clone())),
        }
    }

    /// `rule` for a job of `target`: under the pool's default, with the
    /// task's registered retry options over it (`TaskSpec::options`).
    fn task_rule(&self, target: TaskRef, rule: &Arc<retry::Rule>) -> Arc<retry::Rule> {
        if rule.is_strict() {
            return rule.clone();
        }
        let live = self.generation();
        if target.gen != 0 && target.gen != live.gen {
            // Resolved against another generation: its indices may not be
            // this one's (the job itself is mapped by name when it runs).
            return rule.clone();
        }
        let spec = live
            .plugins
            .get(usize::from(target.plugin))
            .and_then(|p| p.tasks.get(usize::try_from(target.task).ok()?));
        match spec {
            Some(spec) => rule.for_task(&spec.options),
            None => rule.clone(),
        }
    }

    /// The retries of a stream's jobs that chose `choice`.
    pub(crate) fn stream_retry(&self, choice: &retry::Choice) -> Option<Arc<retry::StreamRetry>> {
        self.retry_rule(choice)
            .map(|rule| retry::StreamRetry::new(&self.retries, rule))
    }

    fn apply_raw_choice(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        callback: Option<job::Callback>,
        choice: &retry::Choice,
    ) -> Result<RawResult, TaskError> {
        let slot = ResultSlot::new(callback);
        let mut d = self.new_dispatch(target, codec, args, 1, limits, Reply::Slot(slot.clone()));
        let id = d.first_job;
        // A job's own policy is checked as its limits are: out of range,
        // the job ends `bad_args` naming the setting.
        let bad_policy = match choice {
            retry::Choice::Exactly(p) => retry::check_policy(p).err(),
            retry::Choice::Pool | retry::Choice::Off => None,
        };
        if let Some(e) = bad_policy {
            d.fail_rest(|_| TaskError::new(ErrorKind::BadArgs, e.clone()));
        } else {
            if let Some(rule) = self.retry_rule(choice) {
                let rule = self.task_rule(target, &rule);
                slot.set_retry(retry::SlotRetry::new(&self.retries, rule, &d, &slot));
            }
            self.submit(vec![d])?;
        }
        Ok(RawResult {
            id,
            slot,
            waker_key: None,
        })
    }

    /// Runs a task and waits for its result. `args` is a tuple, one element
    /// per task argument: `(3u64,)`.
    pub fn apply<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
    ) -> Result<R, TaskError> {
        self.apply_async(plugin, task, args)?.get()
    }

    /// Submits a task; the handle gives its result later.
    pub fn apply_async<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
    ) -> Result<AsyncResult<R>, TaskError> {
        self.apply_async_with(plugin, task, args, JobOptions::default())
    }

    /// `apply_async` with per-job limits and callbacks.
    pub fn apply_async_with<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
        opts: JobOptions<R>,
    ) -> Result<AsyncResult<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let bytes = Self::encode_args(&args)?;
        let typed = Arc::new(Typed::new::<A, R>(self, target));
        let JobOptions {
            limits,
            on_success,
            on_error,
            retry,
        } = opts;
        let callback: Option<job::Callback> = if on_success.is_none() && on_error.is_none() {
            None
        } else {
            let typed = typed.clone();
            Some(Box::new(move |outcome: &Outcome| {
                match typed.decode::<R>(outcome.clone()) {
                    Ok(v) => {
                        if let Some(f) = on_success {
                            f(v)
                        }
                    }
                    Err(e) => {
                        if let Some(f) = on_error {
                            f(e)
                        }
                    }
                }
            }))
        };
        let raw = self.apply_raw_choice(target, Codec::Bincode, bytes, limits, callback, &retry)?;
        Ok(AsyncResult {
            raw,
            typed,
            _r: PhantomData,
        })
    }

    /// Applies a one-argument task to every item; results in input order.
    /// Fails with the first failed item's error. `chunksize` items travel
    /// per message (run one after another by one worker, each with its own
    /// time limits).
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError> {
        self.imap(plugin, task, items, chunksize)?.collect()
    }

    /// Like `map`, but each item is the whole argument tuple.
    pub fn starmap<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<A, R>(self, target);
        Imap::new(
            self.typed_stream(target, items, |a| a, true, chunksize),
            typed,
        )
        .collect()
    }

    /// Starts a `map` in the background; `MapResult::get` waits for it.
    pub fn map_async<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<MapResult<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<(A,), R>(self, target);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = job::ChunkSender::new(tx).with_retry(self.stream_retry(&retry::Choice::Pool));
        let chunksize = chunksize.clamp(1, config::MAX_CHUNKSIZE);
        // A chunk stays within the frame limit: the item that would take it
        // past starts the next one (a big item fails alone, as in streams).
        let room = self.cfg.max_frame.saturating_sub(crate::ipc::RUN_HEADER);
        let mut ds = Vec::new();
        let mut n = 0u64;
        let mut items = items.into_iter();
        let mut carried: Option<Vec<u8>> = None;
        loop {
            let mut payload = Vec::new();
            let mut args: Vec<Vec<u8>> = carried.take().into_iter().collect();
            let mut size: usize = args.iter().map(|a| a.len().saturating_add(4)).sum();
            while args.len() < chunksize {
                let Some(item) = items.next() else { break };
                let a = Self::encode_args(&(item,))?;
                let grown = size.saturating_add(a.len()).saturating_add(4);
                if !args.is_empty() && grown > room {
                    carried = Some(a);
                    break;
                }
                size = grown;
                args.push(a);
            }
            if args.is_empty() {
                break;
            }
            // At most MAX_CHUNKSIZE (2^20) items: fits.
            let count = u32::try_from(args.len()).unwrap_or(u32::MAX);
            if count == 1 {
                payload = args.pop().unwrap_or_default();
            } else {
                for a in &args {
                    codec::push_record(&mut payload, a);
                }
            }
            ds.push(self.chunk_dispatch(
                target,
                Codec::Bincode,
                Limits::default(),
                payload,
                count,
                &tx,
                n,
            ));
            n += count as u64;
        }
        self.submit(ds)?;
        Ok(MapResult {
            rx,
            n,
            typed,
            _r: PhantomData,
        })
    }

    /// A dispatch of `count` jobs of one task (`payload`: the raw arguments
    /// when `count == 1`, else argument records) whose outcomes go to a
    /// stream as items `first_index..`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk_dispatch(
        &self,
        target: TaskRef,
        codec: Codec,
        limits: Limits,
        payload: Vec<u8>,
        count: u32,
        tx: &job::ChunkSender,
        first_index: u64,
    ) -> Dispatch {
        let reply = Reply::Stream {
            tx: tx.clone(),
            first_index,
        };
        let d = self.new_dispatch(target, codec, payload, count, limits, reply);
        if let Some(r) = tx.retry() {
            r.register(first_index, &d, self.task_rule(target, r.rule()));
        }
        d
    }

    /// A dispatch of `count` new jobs of `target` (their ids taken here),
    /// not yet run, whose outcomes go to `reply`.
    fn new_dispatch(
        &self,
        target: TaskRef,
        codec: Codec,
        payload: Vec<u8>,
        count: u32,
        limits: Limits,
        reply: Reply,
    ) -> Dispatch {
        Dispatch {
            first_job: self.job_ids(count),
            count,
            plugin: target.plugin,
            task: target.task,
            gen: target.gen,
            codec,
            payload: Arc::new(payload),
            limits,
            reply,
            attempt: 0,
            retries: 0,
            cancelled: false,
            delivered: 0,
            cancel_items: Vec::new(),
        }
    }
}
