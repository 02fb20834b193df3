//! Entry point: parse the CLI, then run, check or hash. Exit codes and nothing else.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use qwen_gateway::app;
use qwen_gateway::commands::cli::{Cli, Command};
use qwen_gateway::commands::ops;
use qwen_gateway::observe::telemetry;
use qwen_gateway::policy::reload;
use qwen_gateway::policy::{Policy, hash_key};
use qwen_gateway::state::AppState;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            deny_warnings,
            deny_demo_key,
            probe,
            against,
        }) => check(
            &cli.config,
            ops::CheckOptions {
                deny_warnings,
                deny_demo_key,
                probe,
                against,
            },
        ),
        Some(Command::Status { url }) => status(&cli.config, url),
        Some(Command::Explain(args)) => explain(&cli.config, args),
        Some(Command::HashKey { key }) => hash(key),
        Some(Command::GenKey { id }) => gen_key(&id),
        None => match run(&cli.config, cli.workers, !cli.no_watch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qwen-gateway: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &Path, mut opts: ops::CheckOptions) -> ExitCode {
    // `--against` without a URL: the gateway this file configures.
    opts.against = match opts.against {
        Some(url) if url.is_empty() => match Policy::load(path) {
            Ok(p) => Some(ops::local_url(&p)),
            Err(_) => None,
        },
        other => other,
    };
    ops::check(path, &opts)
}

/// `explain`: the walk through the guards for a described request; exit 0 when it would be
/// served, 1 when refused, 2 when the policy file is not valid.
fn explain(path: &Path, a: qwen_gateway::commands::cli::ExplainArgs) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qwen-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let described = qwen_gateway::commands::explain::Described {
        peer: Some(a.peer),
        x_forwarded_for: a.forwarded_for,
        x_real_ip: a.real_ip,
        key: a.key,
        key_id: a.key_id,
        method: a.method,
        path: a.route,
        model: a.model,
        prompt_chars: a.prompt_chars,
        max_tokens: a.max_tokens,
    };
    let e = qwen_gateway::commands::explain::explain(&policy, &described);
    print!("{}", qwen_gateway::commands::explain::render(&e));
    if e.code.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `status`: asks the gateway at `url`, or at the policy file's `listen` address.
fn status(path: &Path, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => match Policy::load(path) {
            Ok(p) => ops::local_url(&p),
            Err(e) => {
                eprintln!("qwen-gateway: give --url, or a valid --config to find it: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    ops::status(&url)
}

fn gen_key(id: &str) -> ExitCode {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        eprintln!("qwen-gateway: --id must be 1-64 characters of A-Z a-z 0-9 - _ .");
        return ExitCode::FAILURE;
    }
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        eprintln!("qwen-gateway: the system's random source is not available");
        return ExitCode::FAILURE;
    }
    let key = format!("qgw_{}", hex::encode(bytes));
    println!("key: {key}");
    println!("# Give this key to the client now: it is stored nowhere and not shown again.");
    println!("# Paste this entry under auth.keys in policy.yaml:");
    println!("  - id: \"{id}\"");
    println!("    key: \"{}\"", hash_key(&key));
    ExitCode::SUCCESS
}

fn hash(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(k) => k,
        None => {
            let mut s = String::new();
            if std::io::stdin().read_to_string(&mut s).is_err() {
                eprintln!("qwen-gateway: cannot read the key from standard input");
                return ExitCode::FAILURE;
            }
            s.lines().next().unwrap_or_default().to_owned()
        }
    };
    if key.is_empty() {
        eprintln!("qwen-gateway: empty key");
        return ExitCode::FAILURE;
    }
    println!("{}", hash_key(&key));
    ExitCode::SUCCESS
}

fn run(path: &Path, workers: Option<usize>, watch: bool) -> anyhow::Result<()> {
    // Fail fast, before anything listens: a bad policy at startup is fatal.
    let (policy, loaded) = Policy::load_with_identity(path)?;
    let telemetry = telemetry::init(&policy.log_level, policy.audit.dir.as_deref())?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), policy = %path.display(), "Starting.");
    // Each stream holds two descriptors (client and Ollama); the usual soft limit of 1024 runs
    // out at ~500 streams. Raise it to the hard limit (the unit sets LimitNOFILE).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "Open-file limit."),
        // Under the shipped unit the call is filtered (LimitNOFILE= set it already).
        Err(e) => tracing::info!(error = %e, "Open-file limit left as the service manager set it."),
    }
    for w in &policy.warnings {
        tracing::warn!("Policy: {w}.");
    }
    let state = Arc::new(AppState::new(
        policy,
        path.to_owned(),
        telemetry.log_level.clone(),
        telemetry.audit.clone(),
    ));

    actix_web::rt::System::new().block_on(async move {
        // Before binding: SIGHUP's default action would kill the process.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let reloader = reload::spawn(state.clone(), loaded, watch)?;
        let trigger = reloader.trigger.clone();
        actix_web::rt::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = trigger.send(reload::Trigger::Signal);
            }
        });
        actix_web::rt::spawn(qwen_gateway::upstream::client::refresh_models(
            state.clone(),
        ));
        let keeper = state.clone();
        actix_web::rt::spawn(async move {
            qwen_gateway::upstream::fleet::keep(
                &keeper.fleet,
                || keeper.policy.load_full(),
                |b, model, at| keeper.backends.get(b).mark_sent(model, at),
            )
            .await;
        });
        let result = app::run(state, workers).await;
        drop(reloader);
        result
    })?;
    // Workers hand over their last audit lines as their threads end; then dropping the
    // telemetry guard flushes the file: every accepted request has its line.
    if !qwen_gateway::observe::audit::wait_flushed(std::time::Duration::from_secs(5)) {
        eprintln!("qwen-gateway: some audit lines were not handed over before exit");
    }
    drop(telemetry);
    Ok(())
}
