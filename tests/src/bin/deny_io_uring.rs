//! `deny_io_uring PROGRAM [ARGS...]`: run PROGRAM with `io_uring_setup` refused (`EPERM`),
//! as Docker's and containerd's default seccomp profiles refuse it, so the tests can
//! check what `tapnetd --tap-io auto` does where io_uring is not allowed. Installs a
//! seccomp filter (every other system call allowed) and execs PROGRAM in place: the pid
//! stays the same.

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter};
use std::os::unix::process::CommandExt;
use std::process::{exit, Command};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: deny_io_uring PROGRAM [ARGS...]");
        exit(2);
    };
    let arch = match std::env::consts::ARCH.try_into() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("deny_io_uring: {e:?}");
            exit(2);
        }
    };
    let filter = SeccompFilter::new(
        [(libc::SYS_io_uring_setup, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    );
    let program_bpf: Result<BpfProgram, String> = filter.map_err(|e| e.to_string()).and_then(|f| {
        f.try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    });
    let applied = program_bpf.and_then(|p| apply_filter(&p).map_err(|e| e.to_string()));
    if let Err(e) = applied {
        eprintln!("deny_io_uring: seccomp filter: {e}");
        exit(2);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("deny_io_uring: exec {}: {err}", program.to_string_lossy());
    exit(127);
}
