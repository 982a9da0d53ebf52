//! `pixeld --help`: every subcommand described by its own sentence, and only by it (a doc
//! comment once slid from `blast` onto `tail`, which then called itself a load generator).

use std::process::Command;

use crate::common;

fn help(args: &[&str]) -> String {
    let out = Command::new(common::pixeld_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_subcommand_says_what_it_does() {
    let top = help(&[]);
    let commands = [
        ("serve", "Run the appliance"),
        ("validate", "Check a config file"),
        ("check", "Verify every batch"),
        ("rebuild-aggregates", "Recompute the aggregate store"),
        ("replay", "Stream records to stdout"),
        ("import", "Append lines"),
        ("tail", "Follow a running pixeld's log"),
        ("blast", "Load generator"),
    ];
    for (cmd, says) in commands {
        let line = top
            .lines()
            .map(str::trim_start)
            .find(|l| l.split_whitespace().next() == Some(cmd))
            .unwrap_or_else(|| panic!("`{cmd}` not listed:\n{top}"));
        let about = line[cmd.len()..].trim();
        assert!(about.starts_with(says), "`{cmd}`: {about:?}");
        // Only its own sentence: no other command's.
        for (other, theirs) in commands {
            assert!(
                other == cmd || !about.contains(theirs),
                "`{cmd}` says what `{other}` does: {about:?}"
            );
        }
        assert!(
            help(&[cmd]).starts_with(says),
            "`pixeld {cmd} --help` does not start with {says:?}"
        );
    }
}
