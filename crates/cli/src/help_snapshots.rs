//! Snapshot tests of what users read first: `--help` of the binary and of
//! every subcommand, at a fixed width of 100 columns. A changed option, a
//! lost doc line or a doc comment attached to the wrong command shows up as
//! a snapshot diff (`crates/cli/src/snapshots/`).

use clap::CommandFactory;

use crate::Cli;

/// Every command of the tree with its full path (`worldcompass scorers
/// train-pose`), the generated `help` commands left out.
fn commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    let path = if path.is_empty() { cmd.get_name().to_string() } else { format!("{path} {}", cmd.get_name()) };
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        commands(sub, &path, out);
    }
}

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let mut root = Cli::command().term_width(100);
    root.build();
    let mut all = Vec::new();
    commands(&root, "", &mut all);
    assert!(all.len() >= 20, "expected every subcommand, found {}", all.len());
    for (path, mut cmd) in all {
        let help = cmd.render_long_help().to_string();
        // Every command says what it is for.
        assert!(cmd.get_about().is_some(), "`{path}` has no doc comment");
        insta::assert_snapshot!(format!("help {path}").replace(' ', "_"), help);
    }
}
