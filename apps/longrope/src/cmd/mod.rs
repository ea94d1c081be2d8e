//! One module per subcommand: argument struct (clap) and a `run` function.

pub mod env;
pub mod plugins;
pub mod model;
pub mod generate;
pub mod bench;
pub mod bench_compare;
pub mod bench_profile;
pub mod evaluate;
pub mod tokenize;
pub mod rope;
pub mod search;
pub mod run;
pub mod compare;
pub mod finetune;
pub mod export;
pub mod worker;
pub mod study;
