//! `longrope env`: the libtorch version, threads and CUDA visibility.

use anyhow::Result;

/// Arguments of `longrope env`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// Run `longrope env`.
pub fn run(args: Args) -> Result<()> {
    let info = longrope_core::device::env_info();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("libtorch version : {}", info.libtorch_version);
        println!("libtorch lib dir : {}", info.libtorch_lib.as_deref().unwrap_or("(not found)"));
        println!("threads          : {}", info.threads);
        println!("cuda library     : {}", if info.cuda_library_loaded { "loaded" } else { "not loaded" });
        println!(
            "cuda usable      : {} ({} device(s))",
            if info.cuda_available { "yes" } else { "no" },
            info.cuda_device_count
        );
    }
    Ok(())
}
