//! `billiard-host submit --broker URL ...`: the producer side of the
//! Celery mode on the command line. The flags become a
//! [`fleet::Request`]; the loop itself is [`super::fleet`], which `run
//! --broker` shares.

use std::path::PathBuf;
use std::time::Duration;

use billiard_host::celery::client::SendOptions;
use serde_json::{Map, Value};

use super::exit::usage;
use super::fleet::{self, Input};
use super::input;
use super::queue_flags::QueueFlags;
use super::values::{check_distinct_files, parse_duration, BatchFiles};

const AFTER_HELP: &str = "\
Examples:
  billiard-host submit --broker redis://127.0.0.1:6379/0 --task math.square --args '[3]' --wait
  billiard-host submit --broker redis://127.0.0.1:6379/0 --task math.add --args '[1]' --kwargs '{\"b\": 2}'
  billiard-host submit --broker redis://127.0.0.1:6379/0 --task math.add --kwargs '{\"a\": 1, \"b\": 2}' --wait
  billiard-host submit --broker redis://127.0.0.1:6379/0 --task square --input jobs.jsonl --wait

Input lines are those of `run` (a JSON array of arguments for --task, or an object
  {\"task\": \"add\", \"args\": [1, 2], \"time_limit\": \"2s\", \"soft_time_limit\": \"500ms\"}).
  A task is named as the workers know it: `plugin.task`, or the bare task name when
  only one of their plugins has it.

Output: without --wait one line per job naming its task id, {\"index\":0,\"id\":\"...\"}; with
  --wait the result lines of `run`, in input order (--unordered: as they complete):
  {\"index\":0,\"ok\":9}   {\"index\":1,\"error\":{\"kind\":\"time_limit\",\"message\":\"...\"}}

Waiting: --wait gives up when --timeout passes with no result arriving and no job sent
  (the lines still awaited end `terminated`, naming their task ids; the jobs stay queued
  or running). Default: 5m when standard input and standard error are both terminals (a
  person typed the command and watches), else never (scripts, pipes, cron, services wait
  as long as their jobs take; give them a --timeout). `--timeout never` waits for ever.
  When no result came for 5s (or half the timeout, if shorter) and messages still wait
  in the queue's Redis lists (LLEN of QUEUE and its priority lists), a note on standard
  error says nothing has taken them: is a worker consuming that queue (-Q)?

Exit status: 0 every job was sent (and, with --wait, succeeded); 1 some job failed or was
  not sent; 2 usage error, unreadable input, or a broker that cannot be reached or can
  never work (a scheme it does not speak, a bad password, a user without the rights, a
  database index out of range); 124
  --timeout passed; 130 interrupted by SIGINT or SIGTERM.

Signals: the first SIGINT/SIGTERM stops: no more input is read, the results already
  received are written, and every job still awaited (or read but not sent) ends
  `terminated` (the jobs themselves stay queued or running); exit 130.";

#[derive(clap::Args, Debug)]
#[command(
    after_help = AFTER_HELP,
    group(clap::ArgGroup::new("jobs").required(true).args(["args", "kwargs", "input"]).multiple(true)),
)]
pub struct Args {
    /// The broker: redis://[:PASSWORD@]HOST:PORT/DB, rediss://..., redis+unix:///PATH,
    /// amqp://USER:PASSWORD@HOST[:PORT]/VHOST, amqps://... (RabbitMQ).
    #[arg(long, value_name = "URL")]
    broker: String,
    /// Where results are stored (default: the broker; a Redis, required with AMQP;
    /// not rpc://, whose results go to the reply queue of the client that sent them).
    #[arg(long, value_name = "URL")]
    result_backend: Option<String>,
    /// The task (`plugin.task`, or `task` when the workers have one of that
    /// name); the default for input lines that do not name one.
    #[arg(short, long, value_name = "NAME")]
    task: Option<String>,
    /// Send one job with these positional arguments (a JSON array, or an
    /// object line).
    #[arg(long, value_name = "JSON", conflicts_with = "input")]
    args: Option<String>,
    /// Keyword arguments of the one job (a JSON object), with --args or
    /// alone (no positional arguments, as Celery's `send_task(name,
    /// kwargs=...)`); the workers map them onto the task's argument names.
    #[arg(long, value_name = "JSON", conflicts_with = "input")]
    kwargs: Option<String>,
    /// Send one job per line of FILE (`-`: standard input).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The queue (default: celery).
    #[arg(short = 'Q', long, value_name = "QUEUE")]
    queue: Option<String>,
    #[command(flatten)]
    queues_declared: QueueFlags,
    /// Message priority 0-9 (kombu's Redis priority lists; 0 is the highest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Run no earlier than this long from now (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    countdown: Option<Duration>,
    /// Revoke the job (`terminated`, "expired") if it has not started this
    /// long from now.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Per-job hard limit (the message's timelimit), unless the line sets one.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// Per-job soft limit, unless the line sets one.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    soft_time_limit: Option<Duration>,
    /// Wait for the results and print them as `run` does.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up when this long passes with no result arriving
    /// and no job sent (`never`: wait for ever). Default: 5m from a
    /// terminal, never otherwise (see below).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    timeout: Option<Timeout>,
    /// Write the lines to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --wait: results as they complete instead of in input order.
    #[arg(long, requires = "wait")]
    unordered: bool,
    /// No progress bar, no summary.
    #[arg(short, long)]
    quiet: bool,
}

/// `billiard-host submit`.
pub fn run(args: Args) -> i32 {
    // Before anything is opened for writing: an output that is the input
    // would destroy it (as for `run`).
    let input_path = args.input.clone().unwrap_or_else(|| "-".into());
    let reads_input = args.args.is_none() && args.kwargs.is_none();
    if let Err(msg) = check_distinct_files(&BatchFiles {
        input: reads_input.then_some(input_path.as_path()),
        output: args.output.as_deref(),
        stats: None,
        plugins: &[],
    }) {
        return usage(msg);
    }
    let kwargs = match &args.kwargs {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return usage("--kwargs must be a JSON object such as '{\"b\": 2}'"),
            Err(e) => return usage(format_args!("--kwargs is not JSON: {e}")),
        },
    };
    let input = match (&args.args, &args.input) {
        (Some(a), _) => match input::one_job(a, args.task.as_deref()) {
            Ok(job) => Input::One(job),
            Err(e) => return usage(e),
        },
        // --kwargs alone: one job whose arguments are all by name.
        (None, None) if args.kwargs.is_some() => {
            if args.task.is_none() {
                return usage("--kwargs needs --task NAME");
            }
            Input::One(b"[]".to_vec())
        }
        (None, _) => Input::Path(input_path),
    };
    fleet::execute(fleet::Request {
        queues: args.queues_declared.options(),
        broker: args.broker,
        result_backend: args.result_backend,
        default_task: args.task,
        input,
        kwargs,
        options: SendOptions {
            queue: args.queue,
            priority: args.priority.unwrap_or(0),
            countdown: args.countdown,
            expires: args.expires,
            time_limit: args.time_limit,
            soft_time_limit: args.soft_time_limit,
            ..SendOptions::default()
        },
        output: args.output,
        wait: args.wait,
        timeout: match args.timeout {
            Some(Timeout::Never) => None,
            Some(Timeout::After(d)) => Some(d),
            None => interactive_timeout(),
        },
        unordered: args.unordered,
        quiet: args.quiet,
        forget: false,
    })
}

/// `--timeout`: a duration or `never`.
#[derive(Clone, Copy, Debug)]
enum Timeout {
    Never,
    After(Duration),
}

fn parse_timeout(s: &str) -> Result<Timeout, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Timeout::Never);
    }
    parse_duration(s)
        .map(Timeout::After)
        .map_err(|e| format!("{e}, or never"))
}

/// `--timeout`'s default when a person typed the command and watches.
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// The default `--timeout`: [`INTERACTIVE_TIMEOUT`] when standard input and
/// standard error are terminals (someone at a prompt, who would rather get
/// the prompt back than stare at a queue nobody consumes), none otherwise
/// (a script or service waits as long as its jobs take, as Celery's
/// `AsyncResult.get()` does: cutting a long batch short by default would
/// break it).
fn interactive_timeout() -> Option<Duration> {
    use std::io::IsTerminal;
    (std::io::stdin().is_terminal() && std::io::stderr().is_terminal())
        .then_some(INTERACTIVE_TIMEOUT)
}
