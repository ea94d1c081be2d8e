//! One module per subcommand: argument struct (clap) and a `run` function.

pub mod env;
pub mod plugins;
