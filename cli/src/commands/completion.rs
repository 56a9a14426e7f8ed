//! `tapnet completion bash|zsh`: a completion script generated from the clap
//! definition (clap_complete), so it always matches the flags `tapnet` accepts.

use crate::args::{Cli, CompletionShell};
use clap::CommandFactory;
use clap_complete::{generate, Shell};
use std::io::Write;

/// Write the completion script for `shell` to `out`.
pub fn write_script(shell: CompletionShell, out: &mut dyn Write) {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
    };
    generate(shell, &mut Cli::command(), "tapnet", out);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn script(shell: CompletionShell) -> String {
        let mut buf = Vec::new();
        write_script(shell, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn bash_defines_function_and_knows_subcommands() {
        let s = script(CompletionShell::Bash);
        assert!(s.contains("_tapnet()"), "no completion function");
        assert!(s.contains("complete -F _tapnet"), "function not registered");
        for word in [
            "network",
            "sandbox",
            "exec",
            "completion",
            "prune",
            "connect",
        ] {
            assert!(s.contains(word), "bash script does not mention {word}");
        }
        for flag in [
            "--subnet",
            "--ip-range",
            "--aux-address",
            "--alias",
            "--filter",
        ] {
            assert!(s.contains(flag), "bash script does not mention {flag}");
        }
    }

    #[test]
    fn zsh_is_a_compdef() {
        let s = script(CompletionShell::Zsh);
        assert!(
            s.starts_with("#compdef tapnet"),
            "{}",
            &s[..40.min(s.len())]
        );
        assert!(s.contains("network") && s.contains("--mac-address"));
    }
}
