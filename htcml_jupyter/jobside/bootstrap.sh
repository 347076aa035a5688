#!/bin/sh
# Start a job with a packed Python environment (made by `htcml env pack`).
#
# Usage: bootstrap.sh ARCHIVE jobside.pyz FUNCTION_FILE INPUT_FILE OUTCOME_FILE
#
# ARCHIVE (a .tar.gz in the job's folder, sent by HTCondor's file transfer, or fetched
# by it from a URL) is unpacked into ./htcml_env, the packed interpreter is checked to
# start here, and the rest of the arguments run with it.  When the archive cannot be
# unpacked or the interpreter cannot start (a missing C library, an older glibc,
# another machine type), it prints one line saying what the execute side needs and has,
# and exits with EXIT_ENVIRONMENT_FAILED (wire.py).
# POSIX sh; needs only tar with gzip support (and uname, mkdir, rm).
#
# The machine cache.  Where jobs of one user share the machine's /tmp (pools that set
# MOUNT_UNDER_SCRATCH empty; HTCondor's default gives each job its own /tmp, where this
# cache lives only as long as the job), the unpacked tree is kept in
# /tmp/htcml-env-<uid>/<digest> and later jobs link it instead of unpacking again.  It is
# trusted only when all of these hold:
#   - ARCHIVE is named by its digest (the start of its SHA-256) and sha256sum confirms
#     the bytes before anything is taken from the cache;
#   - the cache folder and the tree are real folders (no links), owned by this user,
#     mode 700, and the tree's .complete file holds the archive's full SHA-256;
#   - the job ad's Owner is this machine user (pilots of glidein pools run several
#     submitters under one uid: there the cache is off unless
#     HTCML_ENV_CACHE_SHARED_UID=1 says the pool keeps submitters apart).
# A tree in use is held with a shared flock; trees beyond HTCML_ENV_CACHE_MAX_MB
# (default 20000) are removed oldest first, never one in use.  HTCML_ENV_CACHE names
# another cache folder, or "none".

EXIT_ENVIRONMENT_FAILED=5
started=$(date +%s.%N 2>/dev/null)
how=unpacked

archive=$1
shift
# HTCondor sends these back on exit and on an eviction (and holds a job that lacks one):
# they exist from the start, even when the environment cannot start
if [ "$1" = jobside.pyz ] && [ $# -eq 4 ]; then
    mkdir -p htcml_checkpoint htcml_outputs
    [ -e "$4" ] || : >"$4"
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

make_venv() {
    # $1: an unpacked environment; $2: the path it will have when it runs.  A venv beside
    # the packed interpreter (venv/pyvenv.cfg, venv/bin/python3 -> ../../bin/python3,
    # venv/lib/pythonX.Y/site-packages -> the packed one) makes every interpreter use
    # that site-packages: Debian's own python3 otherwise looks only in dist-packages,
    # and counts as a venv only when its prefix differs from its base prefix.
    for lib in "$1"/lib/python3*; do
        [ -d "$lib/site-packages" ] || continue
        pyname=${lib##*/}
        mkdir -p "$1/venv/bin" "$1/venv/lib/$pyname" || return 1
        ln -sf "$2/bin/python3" "$1/venv/bin/python3"
        ln -sfn "$2/lib/$pyname/site-packages" "$1/venv/lib/$pyname/site-packages"
        printf 'home = %s/bin\ninclude-system-site-packages = false\n' "$2" \
            > "$1/venv/pyvenv.cfg"
    done
}

# --------------------------------------------------------------- machine-wide cache
# not $TMPDIR: HTCondor points that into the job's own folder
cache_root=${HTCML_ENV_CACHE:-/tmp/htcml-env-$(id -u)}
key=$(basename "$archive" .tar.gz)
key=${key##*-}  # env-<digest>.tar.gz, as `htcml env pack --output FOLDER` names it
cache_max_mb=${HTCML_ENV_CACHE_MAX_MB:-20000}

job_owner() {
    # the job ad's Owner ("" when there is no job ad: a local run)
    if [ -n "$_CONDOR_JOB_AD" ] && [ -f "$_CONDOR_JOB_AD" ]; then
        sed -n 's/^Owner = "\(.*\)"$/\1/p' "$_CONDOR_JOB_AD" | head -n 1
    fi
}

private_dir() {
    # $1 is a real folder (not a link) of this user's that only this user can open
    [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] || return 1
    case $(ls -ld "$1" 2>/dev/null) in
        drwx------*) return 0 ;;
    esac
    return 1
}

private_tmp() {
    # HTCondor's default (MOUNT_UNDER_SCRATCH): /tmp is the job's own scratch/tmp, gone
    # with the job, so a machine cache there would only cost a checksum and a copy
    [ -n "$_CONDOR_SCRATCH_DIR" ] && [ -d "$_CONDOR_SCRATCH_DIR/tmp" ] || return 1
    [ "$(stat -c %d:%i /tmp 2>/dev/null)" = \
      "$(stat -c %d:%i "$_CONDOR_SCRATCH_DIR/tmp" 2>/dev/null)" ]
}

use_cache() {
    [ "$cache_root" != none ] || return 1
    if [ -z "$HTCML_ENV_CACHE" ] && private_tmp; then
        how="unpacked, no machine cache: /tmp is this job's own"
        return 1
    fi
    case $key in
        ""|*[!0-9a-f]*) return 1 ;;  # only archives named by their digest
    esac
    [ "${#key}" -ge 32 ] || return 1
    command -v sha256sum >/dev/null 2>&1 || return 1
    owner=$(job_owner)
    if [ -n "$owner" ] && [ "$owner" != "$(id -un 2>/dev/null)" ] \
            && [ "${HTCML_ENV_CACHE_SHARED_UID:-0}" != 1 ]; then
        return 1  # a pilot running jobs of several submitters under one uid
    fi
    if [ ! -e "$cache_root" ]; then
        (umask 077 && mkdir "$cache_root") 2>/dev/null || return 1
    fi
    private_dir "$cache_root"
}

trusted_tree() {
    # $1: a cached tree; $2: the full SHA-256 it must have been unpacked from
    private_dir "$1" && [ -f "$1/.complete" ] && [ ! -L "$1/.complete" ] \
        && [ "$(cat "$1/.complete" 2>/dev/null)" = "$2" ]
}

trim_cache() {
    # remove the oldest trees beyond the size cap, never one that a job holds
    command -v flock >/dev/null 2>&1 || return 0
    total=$(du -sm "$cache_root" 2>/dev/null | cut -f1)
    for old in $(ls -tr "$cache_root" 2>/dev/null); do
        [ "${total:-0}" -gt "$cache_max_mb" ] || return 0
        tree=$cache_root/$old
        [ "$old" != "$key" ] && private_dir "$tree" && [ -f "$tree/.complete" ] || continue
        if flock -n -x "$tree/.complete" mv "$tree" "$tree.trash" 2>/dev/null; then
            rm -rf "$tree.trash"
            total=$(du -sm "$cache_root" 2>/dev/null | cut -f1)
        fi
    done
}

if [ ! -x "$python" ] && [ -f "$archive" ] && use_cache; then
    cached=$cache_root/$key
    full=$(sha256sum "$archive" | cut -d' ' -f1)
    case $full in
        "$key"*) ;;
        *) fail "an environment archive whose bytes match its name $archive" \
                "one whose SHA-256 is $full (damaged or replaced on the way)" ;;
    esac
    # a claim older than ten minutes belongs to a job that died while unpacking
    find "$cache_root" -maxdepth 1 -name '*.claim' -mmin +10 -exec rmdir {} \; 2>/dev/null
    if ! trusted_tree "$cached" "$full" && mkdir "$cached.claim" 2>/dev/null; then
        tmp=$cache_root/.unpack.$$
        rm -rf "$tmp" && (umask 077 && mkdir "$tmp")
        claimed=$cached.claim
        if tar xzf "$archive" -C "$tmp" 2>/dev/null; then
            chmod 700 "$tmp"
            make_venv "$tmp" "$cached"
            printf '%s' "$full" > "$tmp/.complete"
            rm -rf "$cached"
            mv "$tmp" "$cached"
        else
            rm -rf "$tmp"
        fi
        rmdir "$cached.claim"
        claimed=
        trim_cache
    fi
    waited=0  # another job of ours may be unpacking it right now
    while ! trusted_tree "$cached" "$full" && [ -d "$cached.claim" ] && [ "$waited" -lt 300 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if trusted_tree "$cached" "$full" && ln -s "$cached" "$env_dir"; then
        rm -f "$archive"
        # held while this job runs, so trim_cache never removes the tree under it
        if command -v flock >/dev/null 2>&1; then
            exec 9<"$cached/.complete" && flock -s 9
        fi
        # compiled modules written once into the machine's copy serve every later job
        unset PYTHONDONTWRITEBYTECODE
        how="from the machine cache"
    fi
fi

# --------------------------------------------------------------- this job's own copy
want_python=
if [ ! -x "$python" ]; then
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
    make_venv "$env_dir" "$env_dir"
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

# one line in the job's error file, read back as the map's per-job start cost
ended=$(date +%s.%N 2>/dev/null)
case "$started$ended" in
    *N*|"") ;;
    *) echo "htcml-environment: ready in $(awk "BEGIN { printf \"%.2f\", $ended - $started }") s" \
            "($how)" >&2 ;;
esac

run=$python
[ -f "$env_dir/venv/pyvenv.cfg" ] && run=$env_dir/venv/bin/python3
exec "$run" "$@"
