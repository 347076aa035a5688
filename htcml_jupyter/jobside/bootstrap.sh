#!/bin/sh
# Start a job with a packed Python environment (made by `htcml env pack`).
#
# Usage: bootstrap.sh ARCHIVE runner.py FUNCTION_FILE INPUT_FILE OUTCOME_FILE
#        bootstrap.sh --fetch SUBMIT_SIDE_PATH ARCHIVE runner.py ...
#
# With --fetch the archive is not sent with the job: it is fetched from the submit side
# through the job's chirp connection (condor_chirp fetch), and only when this machine
# has no unpacked copy of it yet.
#
# Unpacks ARCHIVE (a .tar.gz in the job's folder) into ./htcml_env once, checks that
# the packed interpreter starts here, then runs the rest of the arguments with it.
# When the archive cannot be unpacked or the interpreter cannot start (a missing C
# library, an older glibc, another machine type), it prints one line saying what the
# execute side needs and has, and exits with EXIT_ENVIRONMENT_FAILED (wire.py).
# POSIX sh; needs only tar with gzip support (and uname, mkdir, rm).
#
# Where jobs of one user share the machine's /tmp (pools that do not give each job a
# private /tmp), the unpacked environment is kept there, in a folder only this user can
# read, named by the archive's content digest: the next job on that machine links it
# instead of unpacking again.  HTCML_ENV_CACHE names another folder, or "none".

EXIT_ENVIRONMENT_FAILED=5

remote=
if [ "$1" = --fetch ]; then
    remote=$2
    archive=$3
    shift 3
else
    archive=$1
    shift
fi
env_dir=$(pwd)/htcml_env
python=$env_dir/bin/python3

claimed=
fail() {
    [ -z "$claimed" ] || rmdir "$claimed" 2>/dev/null
    echo "htcml: the execute side needs $1; it has $2; use environment=shared (a shared" \
         "filesystem), python=<an interpreter there> or container_image=<an image with" \
         "Python ${want_python:-3}>" >&2
    exit "$EXIT_ENVIRONMENT_FAILED"
}

one_line() {
    # the first (with $2 = last: the last) non-empty line of $1, at most 300 characters
    found=
    while IFS= read -r line; do
        if [ -n "$line" ] && { [ -z "$found" ] || [ "$2" = last ]; }; then
            found=$line
        fi
    done <<EOF
$1
EOF
    printf '%.300s' "$found"
}

fetch() {
    # the archive from the submit side, unless it came with the job
    [ -f "$archive" ] && return 0
    [ -n "$remote" ] || return 0
    chirp=$(condor_config_val LIBEXEC 2>/dev/null)/condor_chirp
    [ -x "$chirp" ] || chirp=/usr/libexec/condor/condor_chirp
    [ -x "$chirp" ] || fail "condor_chirp, to fetch the environment $remote" \
                            "none in HTCondor's LIBEXEC folder"
    if ! out=$("$chirp" fetch "$remote" "$archive" 2>&1); then
        rm -f "$archive"
        fail "a chirp connection that may read $remote from the submit side" \
             "$(one_line "$out")"
    fi
}

# --------------------------------------------------------------- machine-wide cache
# not $TMPDIR: HTCondor points that into the job's own folder
cache_root=${HTCML_ENV_CACHE:-/tmp/htcml-env-$(id -u)}
key=$(basename "$archive" .tar.gz)

use_cache() {
    [ "$cache_root" != none ] || return 1
    case $key in
        ""|*[!0-9a-f]*) return 1 ;;  # only archives named by their digest (packs)
    esac
    mkdir -p "$cache_root" 2>/dev/null || return 1
    chmod 700 "$cache_root" 2>/dev/null || return 1
    [ -O "$cache_root" ] || return 1  # never a folder someone else made
    return 0
}

if [ ! -x "$python" ] && { [ -f "$archive" ] || [ -n "$remote" ]; } && use_cache; then
    cached=$cache_root/$key
    # a claim older than ten minutes belongs to a job that died while unpacking
    find "$cache_root" -maxdepth 1 -name '*.claim' -mmin +10 -exec rmdir {} \; 2>/dev/null
    if [ ! -f "$cached/.complete" ] && mkdir "$cached.claim" 2>/dev/null; then
        tmp=$cache_root/.unpack.$$
        rm -rf "$tmp" && mkdir "$tmp"
        claimed=$cached.claim  # given back by fail() if the fetch fails
        fetch
        if tar xzf "$archive" -C "$tmp" 2>/dev/null; then
            : > "$tmp/.complete"
            rm -rf "$cached"
            mv "$tmp" "$cached"
        else
            rm -rf "$tmp"
        fi
        rmdir "$cached.claim"
        claimed=
    fi
    waited=0  # another job of ours may be unpacking it right now
    while [ ! -f "$cached/.complete" ] && [ -d "$cached.claim" ] && [ "$waited" -lt 300 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if [ -f "$cached/.complete" ] && ln -s "$cached" "$env_dir"; then
        rm -f "$archive"
        # compiled modules written once into the machine's copy serve every later job
        unset PYTHONDONTWRITEBYTECODE
    fi
fi

# --------------------------------------------------------------- this job's own copy
want_python=
if [ ! -x "$python" ]; then
    fetch
    if [ ! -f "$archive" ]; then
        fail "the environment archive $archive in the job's folder" "no such file"
    fi
    mkdir -p "$env_dir" || fail "a writable job folder" "$(pwd) not writable"
    if ! out=$(tar xzf "$archive" -C "$env_dir" 2>&1); then
        rm -rf "$env_dir"
        fail "an intact environment archive $archive (made by htcml env pack)" \
             "one that tar cannot unpack: $(one_line "$out")"
    fi
    rm -f "$archive"  # the unpacked copy is all the job needs; free the disk
fi

info=$env_dir/htcml-env.txt
if [ ! -f "$info" ] || [ ! -x "$python" ]; then
    rm -rf "$env_dir"
    fail "an environment archive made by htcml env pack ($archive)" \
         "an archive without bin/python3 or htcml-env.txt"
fi
want_machine=
want_glibc=
while IFS='=' read -r key value; do
    case $key in
        python) want_python=$value ;;
        machine) want_machine=$value ;;
        glibc) want_glibc=$value ;;
    esac
done < "$info"
have_machine=$(uname -m)
if [ -n "$want_machine" ] && [ "$want_machine" != "$have_machine" ]; then
    fail "a $want_machine machine (the packed Python $want_python was built for one)" \
         "$have_machine"
fi

LD_LIBRARY_PATH=$env_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
unset PYTHONHOME

if ! out=$("$python" -c "import sys, pickle, json, socket" 2>&1); then
    have_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null || echo "an unknown C library")
    case $out in
        *GLIBC_*)
            need=${out#*GLIBC_}
            need=GLIBC_${need%%[!0-9.]*}
            fail "$need or newer (the packed Python was built with glibc $want_glibc)" \
                 "$have_glibc" ;;
        *"error while loading shared libraries"*)
            lib=${out#*shared libraries: }
            lib=${lib%%:*}
            fail "the C library $lib for the packed Python $want_python" \
                 "no $lib where the loader looks" ;;
        *)
            fail "a machine where the packed Python $want_python starts" \
                 "$have_machine with $have_glibc, where it fails: $(one_line "$out" last)" ;;
    esac
fi

exec "$python" "$@"
