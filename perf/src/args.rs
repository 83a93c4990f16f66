//! The command line (clap), turned into what a run needs: [`Options`].

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::figures::Length;
use crate::glueberry_peer::Setup;
use crate::{Cipher, Scenario};

/// Glueberry's throughput, latency, handshake rate and connection cost, measured side by side
/// with the stacks a user would otherwise pick, in one run on one machine.
#[derive(Debug, Parser)]
#[command(name = "glueberry-perf", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Both ends on loopback, measured against plain TCP in the same run.
    Local(Measure),
    /// One end, for two machines: prints the `client` command for the other.
    Server {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        #[command(flatten)]
        length: LengthArgs,
        #[command(flatten)]
        setup: SetupArgs,
    },
    /// The other end: measures against a `server` (bulk, small and latency).
    Client {
        /// The server's address.
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        /// The server's peer id (it prints it).
        #[arg(long, value_name = "ID")]
        peer: String,
        #[command(flatten)]
        measure: Measure,
    },
    /// Every scenario against every peer (plain TCP, tokio + rustls, rust-libp2p, iperf3),
    /// trials interleaved, a Markdown table of figures and ratios.
    Compare {
        /// Seconds per measurement.
        #[arg(long, value_name = "N", value_parser = positive::<f64>, default_value_t = 3.0)]
        seconds: f64,
        /// Trials of every peer, interleaved.
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 3)]
        trials: usize,
        #[command(flatten)]
        pick: Pick,
        /// Write the table to this Markdown file too.
        #[arg(long, value_name = "FILE.md")]
        out: Option<String>,
        /// Save the figures as a baseline for `regress`.
        #[arg(long, value_name = "FILE.json")]
        save: Option<String>,
    },
    /// Runs `compare` again and flags any ratio more than 10 % below a stored baseline.
    Regress {
        /// The baseline `compare --save` wrote.
        #[arg(long, value_name = "FILE.json", default_value = "perf/baseline.json")]
        baseline: String,
        /// Seconds per measurement.
        #[arg(long, value_name = "N", value_parser = positive::<f64>, default_value_t = 3.0)]
        seconds: f64,
        /// Trials of every peer, interleaved.
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 3)]
        trials: usize,
    },
    /// The dialling end of `local --scenario scale` above 5,000 connections, started by it (a
    /// process of its own: two descriptors per connection in one process pass the limit).
    #[command(hide = true)]
    ScaleClients {
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        #[arg(long, value_name = "ID")]
        peer: String,
        #[arg(long, value_name = "N")]
        count: usize,
    },
    /// Peer sets on loopback: time to a full mesh from two bootstrap addresses, after an epoch
    /// change, after a member moves; the shard's CPU per refused stranger and per member.
    Members {
        /// Members of the first set.
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 50)]
        members: usize,
        /// Members the epoch change replaces.
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 10)]
        replace: usize,
        /// Dials of each kind per round of the stranger measurement.
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 200)]
        dials: usize,
        /// Rounds (strangers and members interleaved).
        #[arg(long, value_name = "N", value_parser = positive::<usize>, default_value_t = 5)]
        rounds: usize,
    },
    /// Three nodes through fault proxies: faults, churn and invariants over time, with the
    /// process's memory, threads and descriptors every 5 s.
    Soak {
        /// How long.
        #[arg(long, value_name = "N", value_parser = positive::<f64>, default_value_t = 60.0)]
        seconds: f64,
        /// The seed of the faults' schedule.
        #[arg(long, value_name = "N", value_parser = positive::<u64>, default_value_t = 1)]
        seed: u64,
    },
}

/// What `local` and `client` measure, and how.
#[derive(Debug, Args)]
struct Measure {
    #[command(flatten)]
    length: LengthArgs,
    #[command(flatten)]
    setup: SetupArgs,
    #[command(flatten)]
    pick: Pick,
    /// One JSON line a second and one per measurement (the libp2p perf runner's convention,
    /// plus the scenario's own figures).
    #[arg(long)]
    json: bool,
}

/// How long a measurement lasts.
#[derive(Debug, Args)]
struct LengthArgs {
    /// Seconds per measurement (default 3; `server`: until stopped).
    #[arg(long, value_name = "N", value_parser = positive::<f64>)]
    seconds: Option<f64>,
    /// Instead of a time: until this many bytes were received.
    #[arg(long, value_name = "N", value_parser = positive::<u64>, conflicts_with = "seconds")]
    bytes: Option<u64>,
}

/// How the Glueberry nodes are set up.
#[derive(Debug, Args)]
struct SetupArgs {
    /// The message size of the `small` scenario (default: 64 and 1024).
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    size: Option<usize>,
    /// Sending nodes (bulk-peers, shard-scaling; the count for scale; the most idle peers for
    /// idle-peers, which also runs a tenth and two fifths of it, and 0).
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    peers: Option<usize>,
    /// Streams per connection (bulk-streams).
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    streams: Option<usize>,
    /// Shards of the receiving node.
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    shards: Option<usize>,
    /// Each stream's window, in bytes.
    #[arg(long, value_name = "BYTES", value_parser = positive::<u32>)]
    window: Option<u32>,
    /// How long each shard polls after its last work before sleeping (0 turns it off).
    #[arg(long, value_name = "MICROS")]
    busy_poll: Option<u64>,
    /// The nodes' I/O backend: auto, io_uring or poll.
    #[arg(long, value_name = "BACKEND")]
    backend: Option<glueberry::Backend>,
    /// Latency: the echo server answers on an application thread (from `messages()`) instead
    /// of inline, in a message handler on its shard thread.
    #[arg(long)]
    app_thread_echo: bool,
    /// The record cipher.
    #[arg(long, value_enum)]
    cipher: Option<CipherArg>,
    /// One record per message.
    #[arg(long)]
    no_batching: bool,
    /// Each node records into its own Prometheus recorder (what metrics cost when on).
    #[arg(long)]
    metrics: bool,
    /// Records NEITHER ENCRYPTED NOR AUTHENTICATED: for profiling the engine only.
    #[arg(long, conflicts_with = "cipher")]
    danger_null_cipher: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CipherArg {
    /// ChaCha20-Poly1305.
    Chacha,
    /// AES-256-GCM.
    Aes,
}

/// Which scenarios.
#[derive(Debug, Args)]
struct Pick {
    /// The scenario (small: `--size`, or 64 and 1024 bytes; shard-scaling: `--peers`, and
    /// `--danger-null-cipher` to measure the engine alone).
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    scenario: ScenarioArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    Bulk,
    BulkStreams,
    BulkPeers,
    Small,
    Latency,
    LatencyUnderLoad,
    Handshake,
    Scale,
    ShardScaling,
    IdlePeers,
    All,
}

/// A number above zero.
fn positive<T>(s: &str) -> Result<T, String>
where
    T: FromStr + PartialOrd + Default,
    T::Err: Display,
{
    let n: T = s.parse().map_err(|e| format!("{e}"))?;
    if n > T::default() {
        Ok(n)
    } else {
        Err("must be above zero".into())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    Local,
    Server {
        listen: SocketAddr,
    },
    Client {
        connect: SocketAddr,
        peer: String,
    },
    Compare {
        out: Option<String>,
        save: Option<String>,
        trials: usize,
    },
    Regress {
        baseline: String,
        trials: usize,
    },
    Soak {
        seed: u64,
    },
    Members {
        members: usize,
        replace: usize,
        dials: usize,
        rounds: usize,
    },
    ScaleClients {
        connect: SocketAddr,
        peer: String,
        count: usize,
    },
}

/// What a run needs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub command: Command,
    pub length: Length,
    /// A length was given (`server` otherwise runs until stopped).
    pub seconds_given: bool,
    pub json: bool,
    pub scenarios: Vec<Scenario>,
    pub setup: Setup,
    /// Streams or peers for the bulk-streams, bulk-peers and scale scenarios.
    pub count: Option<usize>,
    /// `compare` with `--scenario`: only these.
    pub only: Option<Vec<Scenario>>,
}

impl Options {
    fn new(command: Command) -> Self {
        Self {
            command,
            length: Length::Time(Duration::from_secs(3)),
            seconds_given: false,
            json: false,
            scenarios: Vec::new(),
            setup: Setup::default(),
            count: None,
            only: None,
        }
    }

    /// A command that measures scenarios (`local`, `client`).
    fn measuring(command: Command, measure: Measure) -> Self {
        let mut o = Self::new(command);
        o.length(measure.length);
        let size = measure.setup.size;
        o.setup(measure.setup);
        o.json = measure.json;
        o.pick(measure.pick, size);
        o
    }

    fn length(&mut self, length: LengthArgs) {
        if let Some(seconds) = length.seconds {
            self.length = Length::Time(Duration::from_secs_f64(seconds));
            self.seconds_given = true;
        }
        if let Some(bytes) = length.bytes {
            self.length = Length::Bytes(bytes);
        }
    }

    fn seconds(&mut self, seconds: f64) {
        self.length = Length::Time(Duration::from_secs_f64(seconds));
        self.seconds_given = true;
    }

    fn setup(&mut self, args: SetupArgs) {
        let setup = &mut self.setup;
        if let Some(peers) = args.peers {
            setup.peers = peers;
        }
        if let Some(streams) = args.streams {
            setup.streams = streams;
        }
        self.count = args.peers.or(args.streams);
        if let Some(shards) = args.shards {
            setup.shards = shards;
        }
        setup.window = args.window;
        setup.busy_poll = args.busy_poll.map(Duration::from_micros);
        setup.app_thread_echo = args.app_thread_echo;
        if let Some(backend) = args.backend {
            setup.backend = backend;
        }
        setup.cipher = match (args.cipher, args.danger_null_cipher) {
            (_, true) => Cipher::DangerNull,
            (Some(CipherArg::Aes), _) => Cipher::Aes,
            (Some(CipherArg::Chacha) | None, _) => Cipher::ChaCha,
        };
        setup.batching = !args.no_batching;
        setup.metrics = args.metrics;
    }

    /// The scenarios `pick` names; `size` is the small scenario's message size, if given.
    fn pick(&mut self, pick: Pick, size: Option<usize>) {
        let small = match size {
            Some(size) => vec![Scenario::Small(size)],
            None => vec![Scenario::Small(64), Scenario::Small(1024)],
        };
        self.scenarios = match pick.scenario {
            ScenarioArg::Bulk => vec![Scenario::Bulk],
            ScenarioArg::BulkStreams => vec![Scenario::BulkStreams],
            ScenarioArg::BulkPeers => vec![Scenario::BulkPeers],
            ScenarioArg::Small => small,
            ScenarioArg::Latency => vec![Scenario::Latency],
            ScenarioArg::LatencyUnderLoad => vec![Scenario::LatencyUnderLoad],
            ScenarioArg::Handshake => vec![Scenario::Handshake],
            ScenarioArg::Scale => vec![Scenario::Scale],
            ScenarioArg::ShardScaling => vec![Scenario::ShardScaling],
            ScenarioArg::IdlePeers => vec![Scenario::IdlePeers],
            ScenarioArg::All => {
                let mut all = vec![Scenario::Bulk, Scenario::BulkStreams, Scenario::BulkPeers];
                all.extend(small);
                all.extend([
                    Scenario::Latency,
                    Scenario::LatencyUnderLoad,
                    Scenario::Handshake,
                    Scenario::Scale,
                ]);
                all
            }
        };
        if pick.scenario != ScenarioArg::All {
            self.only = Some(self.scenarios.clone());
        }
    }
}

/// Parses the arguments after the program's name.
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("glueberry-perf".to_string()).chain(args))?;
    Ok(options(cli.command))
}

/// Parses the process's arguments; prints help or the error and exits where clap would.
pub(crate) fn from_env() -> Options {
    parse(std::env::args().skip(1)).unwrap_or_else(|e| e.exit())
}

fn options(command: Cmd) -> Options {
    match command {
        Cmd::Local(measure) => Options::measuring(Command::Local, measure),
        Cmd::Server {
            listen,
            length,
            setup,
        } => {
            let mut o = Options::new(Command::Server { listen });
            o.length(length);
            o.setup(setup);
            o
        }
        Cmd::Client {
            connect,
            peer,
            measure,
        } => Options::measuring(Command::Client { connect, peer }, measure),
        Cmd::Compare {
            seconds,
            trials,
            pick,
            out,
            save,
        } => {
            let mut o = Options::new(Command::Compare { out, save, trials });
            o.seconds(seconds);
            o.pick(pick, None);
            o
        }
        Cmd::Regress {
            baseline,
            seconds,
            trials,
        } => {
            let mut o = Options::new(Command::Regress { baseline, trials });
            o.seconds(seconds);
            o
        }
        Cmd::Soak { seconds, seed } => {
            let mut o = Options::new(Command::Soak { seed });
            o.seconds(seconds);
            o
        }
        Cmd::ScaleClients {
            connect,
            peer,
            count,
        } => Options::new(Command::ScaleClients {
            connect,
            peer,
            count,
        }),
        Cmd::Members {
            members,
            replace,
            dials,
            rounds,
        } => Options::new(Command::Members {
            members,
            replace: replace.min(members.saturating_sub(3)),
            dials,
            rounds,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse_line(s: &str) -> Result<Options, clap::Error> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_parse_and_nonsense_is_refused() {
        let o =
            parse_line("local --seconds 0.5 --json --scenario small --cipher aes --no-batching")
                .expect("parse");
        assert_eq!(o.length, Length::Time(Duration::from_millis(500)));
        assert!(o.json && !o.setup.batching && o.setup.cipher == Cipher::Aes);
        assert_eq!(
            o.scenarios,
            vec![Scenario::Small(64), Scenario::Small(1024)]
        );
        let o = parse_line("local --scenario small --size 200 --bytes 1000").expect("parse");
        assert_eq!(o.scenarios, vec![Scenario::Small(200)]);
        assert_eq!(o.length, Length::Bytes(1000));
        let o =
            parse_line("local --scenario bulk-peers --peers 8 --backend poll --danger-null-cipher")
                .expect("parse");
        assert_eq!(o.scenarios, vec![Scenario::BulkPeers]);
        assert_eq!((o.setup.peers, o.count), (8, Some(8)));
        assert_eq!(o.setup.backend, glueberry::Backend::Poll);
        assert_eq!(o.setup.cipher, Cipher::DangerNull);
        let o = parse_line("local --scenario latency --busy-poll 0").expect("parse");
        assert_eq!(o.setup.busy_poll, Some(Duration::ZERO));
        let o = parse_line("client --connect 10.0.0.1:9000 --peer gbp1x").expect("parse");
        assert!(matches!(o.command, Command::Client { .. }));
        assert!(!o.seconds_given);

        for nonsense in [
            "",
            "local --seconds -1",
            "local --seconds 0",
            "local --seconds 1 --bytes 5",
            "local --scenario nope",
            "local --cipher rot13",
            "local --cipher aes --danger-null-cipher",
            "local --backend carrier-pigeon",
            "local --shards 0",
            "local --trials 3",
            "server",
            "client --connect 1.2.3.4:5",
            "soak --seed 0",
            "fly",
        ] {
            assert!(parse_line(nonsense).is_err(), "{nonsense:?} was accepted");
        }
    }

    #[test]
    fn each_command_has_its_defaults() {
        let o = parse_line("soak").expect("parse");
        assert_eq!(o.command, Command::Soak { seed: 1 });
        assert_eq!(o.length, Length::Time(Duration::from_secs(60)));
        let o = parse_line("soak --seconds 7200 --seed 7").expect("parse");
        assert_eq!(o.command, Command::Soak { seed: 7 });
        assert_eq!(o.length, Length::Time(Duration::from_secs(7200)));
        let o = parse_line("compare --seconds 2 --trials 5 --scenario handshake").expect("parse");
        assert_eq!(
            o.command,
            Command::Compare {
                out: None,
                save: None,
                trials: 5
            }
        );
        assert_eq!(o.only, Some(vec![Scenario::Handshake]));
        let o = parse_line("compare").expect("parse");
        assert_eq!(o.only, None);
        assert!(matches!(o.command, Command::Compare { trials: 3, .. }));
        let o = parse_line("regress").expect("parse");
        assert_eq!(
            o.command,
            Command::Regress {
                baseline: "perf/baseline.json".into(),
                trials: 3
            }
        );
        let o = parse_line("local").expect("parse");
        assert_eq!(o.length, Length::Time(Duration::from_secs(3)));
        assert_eq!(o.scenarios.len(), 9, "{:?}", o.scenarios);
        let o = parse_line("server --listen 0.0.0.0:9000").expect("parse");
        assert!(!o.seconds_given);
    }
}
