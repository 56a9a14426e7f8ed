# Sourced by the end-to-end bench scripts before they enter their private namespaces:
# `bench_ns_args` prints unshare(1)'s arguments. As root: net + mount namespaces only, so
# tapnetd keeps the real root's capabilities, as in production (CAP_SYS_NICE for
# `--worker-nice auto`). Otherwise a user namespace too (`-Ur`), where the daemon's root
# has no capability outside it.
bench_ns_args() {
    if [ "$(id -u)" = 0 ]; then
        echo "-nm"
    else
        echo "-Urnm"
    fi
}
