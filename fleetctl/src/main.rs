//! The `fleetctl` binary: see `fleetctl --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match fleetctl::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version go to stdout with 0; usage errors to
            // stderr with 2.
            let _ = e.print();
            return ExitCode::from(clamp(e.exit_code()));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(fleetctl::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(clamp(code))
}

/// Exit codes outside 0..=255 (a remote code of -1, 256) become 1 / their
/// low byte, as a shell would see them.
fn clamp(code: i32) -> u8 {
    match u8::try_from(code) {
        Ok(c) => c,
        Err(_) if code < 0 => 1,
        Err(_) => (code & 0xff) as u8,
    }
}
