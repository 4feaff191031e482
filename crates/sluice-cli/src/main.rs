//! The `sluice` command: run the broker (`serve`), manage streams, put and read records (alone
//! or as a consumer group), and inspect or verify data files of a stopped server. Its output is an interface: with `--json`
//! every result is printed as JSON lines in the shapes of `docs/operations.md`.

mod alloc;
mod bench;
mod client_cmds;
mod group_cmds;
mod inspect;
mod limits;
mod output;
mod serve;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice: a durable, disk-backed, partitioned log broker.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    /// Address of the Sluice server to talk to [default: 127.0.0.1:7070; `sluice bench`
    /// starts its own server unless this is given].
    #[arg(long, global = true, env = "SLUICE_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker on a data directory.
    Serve(serve::Args),
    /// Create, list, describe, delete, split and merge streams, and change their retention.
    #[command(subcommand)]
    Stream(client_cmds::StreamCommand),
    /// Append records to a stream: one from the arguments, or one per line of standard input.
    Put(client_cmds::PutArgs),
    /// Read records of a partition, from the start, the end, an offset or a time; or, with
    /// --group, of the partitions a consumer group leases to this process.
    Read(client_cmds::ReadArgs),
    /// List consumer groups, and describe a group's members, leases, checkpoints and lag.
    #[command(subcommand)]
    Group(group_cmds::GroupCommand),
    /// Show what a segment or index file holds (works on a stopped server's files).
    Inspect(inspect::Args),
    /// Check every checksum and index under a data directory; exit 1 on any damage.
    Verify(verify::Args),
    /// Load generator: measure write throughput and ack latency, or catch-up reads.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Where client commands connect when no `--server` or `SLUICE_SERVER` is given.
const DEFAULT_SERVER: &str = "127.0.0.1:7070";

fn main() -> ExitCode {
    alloc::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let server = cli.server.as_deref().unwrap_or(DEFAULT_SERVER);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Stream(cmd) => client_cmds::run_stream(server, cmd),
        Command::Put(args) => client_cmds::run_put(server, args),
        Command::Read(args) => client_cmds::run_read(server, args),
        Command::Group(cmd) => group_cmds::run(server, cmd),
        Command::Bench(cmd) => bench::run(cli.server.as_deref(), cmd),
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage mistake becomes one line on stderr
/// (clap's first line, which names the problem) and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            // clap's message is the lines before its usage block; some of them (a list of
            // missing arguments) continue the first, so they are joined into one line.
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let what = what.join(" ");
            let what = what.trim_start_matches("error: ");
            eprintln!("sluice: {what} (see `sluice --help`)");
            ExitCode::from(2)
        }
    }
}
