#!/usr/bin/env bash
# Builds OVMF.fd (OvmfPkgX64, RELEASE, Debian's flags: TDX support in, TDVF metadata) from
# Debian's edk2 source package with seamless's patch series on top, and caches the image
# outside the clone, keyed by the sha256 of (series + patches + this script). A machine
# builds each series once; a changed series rebuilds incrementally in the same work tree.
#
# usage: ovmf-patches/build.sh [--print-key | --cached] [--force]
#   prints the path of the cached OVMF.fd on its last line of stdout (build output goes to
#   stderr and to $CACHE/build.log); --cached only prints it if this series is built already
#   (exit 1 otherwise); --print-key prints the series key.
#
# environment:
#   SEAMLESS_CACHE    cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/seamless)
#   EDK2_DSC          a local edk2_2022.11-6+deb12u2.dsc with its tarballs beside it: used
#                     instead of `apt-get source` (an optimisation: same bytes, no download)
#   EDK2_JOBS         parallel build jobs (default: nproc)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EDK2_VERSION=2022.11-6+deb12u2
EDK2_DIR=edk2-2022.11
CACHE=${SEAMLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seamless}/ovmf
# Debian's debian/rules, build-ovmf, the 2 MiB OVMF.fd: OVMF_2M_FLAGS.
DEBIAN_FLAGS=(-DNETWORK_HTTP_BOOT_ENABLE=TRUE -DNETWORK_IP6_ENABLE=TRUE -DNETWORK_TLS_ENABLE
    -DSECURE_BOOT_ENABLE=TRUE -DTPM2_ENABLE=TRUE -DFD_SIZE_2MB)

log() { echo "ovmf-patches: $*" >&2; }
die() {
    echo "ovmf-patches: error: $*" >&2
    exit 2
}

print_key=0 force=0 cached=0
for arg in "$@"; do
    case $arg in
        --print-key) print_key=1 ;;
        --cached) cached=1 ;;
        --force) force=1 ;;
        *) die "unknown option '$arg' (usage: build.sh [--print-key | --cached] [--force])" ;;
    esac
done

# The series in order: `series` names the patches, one a line (# comments allowed).
mapfile -t PATCHES < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/series")
for p in "${PATCHES[@]}"; do
    [[ -r $HERE/$p ]] || die "series names $p, which is not in $HERE"
done

key=$(cd "$HERE" && cat series "${PATCHES[@]}" build.sh | sha256sum | cut -c1-16)
if ((print_key)); then
    echo "$key"
    exit 0
fi
out=$CACHE/images/$key/OVMF.fd
if [[ -r $out ]] && ((!force)); then
    log "cached: $out (series key $key)"
    echo "$out"
    exit 0
fi
if ((cached)); then
    log "series $key is not built yet (run ovmf-patches/build.sh)"
    exit 1
fi

# Prerequisites: Debian's Build-Depends for the OVMF part (nasm, iasl, uuid-dev, python3, a C
# toolchain) and dpkg-source to unpack the source package.
prereqs() {
    local missing=() tool pkg
    for tool in nasm:nasm iasl:acpica-tools gcc:build-essential make:build-essential \
        python3:python3 dpkg-source:dpkg-dev git:git; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
    done
    [[ -r /usr/include/uuid/uuid.h ]] || missing+=(uuid-dev)
    ((${#missing[@]})) || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo=(sudo -n) ||
            die "missing build prerequisites: ${missing[*]} (apt-get install ${missing[*]})"
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "could not install ${missing[*]}; install them and run this again"
}

# Debian's source package, unpacked once with Debian's own quilt series applied
# (dpkg-source -x applies debian/patches/series for a 3.0 (quilt) package).
fetch_source() {
    local pristine=$CACHE/src/$EDK2_DIR
    [[ -f $pristine/.seamless-unpacked ]] && return 0
    rm -rf "$CACHE/src"
    mkdir -p "$CACHE/src"
    local dsc
    if [[ -n ${EDK2_DSC:-} ]]; then
        [[ -r $EDK2_DSC ]] || die "EDK2_DSC=$EDK2_DSC is not readable"
        dsc=$EDK2_DSC
    else
        log "apt-get source --download-only edk2=$EDK2_VERSION (needs a deb-src entry for bookworm)"
        (cd "$CACHE/src" && apt-get source -q --download-only "edk2=$EDK2_VERSION" >&2) ||
            die "apt-get source edk2=$EDK2_VERSION failed: add a deb-src entry for bookworm (and bookworm-updates) reusing your mirror, then apt-get update"
        dsc=$CACHE/src/edk2_$EDK2_VERSION.dsc
    fi
    log "dpkg-source -x $(basename "$dsc") (with Debian's quilt series)"
    dpkg-source -q --no-check -x "$dsc" "$pristine" >&2
    touch "$pristine/.seamless-unpacked"
}

# The work tree: a git repository whose first commit is Debian's patched source, so that our
# series goes on with `git am` and a changed series resets to that base and re-applies. Build/
# is untracked and survives, so a rebuild is incremental.
prepare_tree() {
    local tree=$CACHE/work/$EDK2_DIR
    local git=(git -C "$tree" -c user.name=seamless -c user.email=seamless@localhost -c commit.gpgsign=false)
    if [[ ! -d $tree/.git ]]; then
        rm -rf "$CACHE/work"
        mkdir -p "$CACHE/work"
        log "copying Debian's source into the work tree"
        cp -a "$CACHE/src/$EDK2_DIR" "$tree"
        rm -rf "$tree/.pc"
        printf '/Build/\n/Conf/*.txt\n/Conf/.cache/\n*.pyc\n__pycache__/\n/BaseTools/Source/C/bin/\n/BaseTools/Source/C/libs/\n/BaseTools/Source/C/**/*.o\n/BaseTools/Source/C/*/*.d\n/.seamless-*\n' >"$tree/.git-info-exclude"
        "${git[@]}" init -q
        mv "$tree/.git-info-exclude" "$tree/.git/info/exclude"
        "${git[@]}" add -A
        "${git[@]}" commit -q -m "edk2 $EDK2_VERSION as Debian ships it (debian/patches applied)"
        "${git[@]}" tag debian-base
    fi
    if [[ $(cat "$tree/.seamless-series" 2>/dev/null) != "$key" ]]; then
        log "applying the series (${#PATCHES[@]} patches) on Debian's base"
        "${git[@]}" am --abort >/dev/null 2>&1 || true
        "${git[@]}" reset -q --hard debian-base
        local p
        for p in "${PATCHES[@]}"; do
            "${git[@]}" -c core.whitespace=cr-at-eol am -q --keep-cr "$HERE/$p" >&2 || {
                "${git[@]}" am --abort >/dev/null 2>&1 || true
                die "$p does not apply to Debian's edk2 $EDK2_VERSION"
            }
        done
        echo "$key" >"$tree/.seamless-series"
    fi
    echo "$tree"
}

# Runs in a subshell whose every step is checked by hand: the caller's `|| status=$?` turns
# `set -e` off inside it.
build_ovmf() {
    local tree=$1 jobs=${EDK2_JOBS:-$(nproc)}
    # edk2's scripts want the system python (its BaseTools import distutils-era modules).
    local python=/usr/bin/python3
    [[ -x $python ]] || python=$(command -v python3)
    (
        cd "$tree" || exit 2
        export PYTHON_COMMAND=$python WORKSPACE=$tree
        unset EDK_TOOLS_PATH CONF_PATH ECP_SOURCE EDK_SOURCE EFI_SOURCE
        set +u
        set -- # edksetup.sh reads its arguments from ours
        # shellcheck disable=SC1091
        . ./edksetup.sh >/dev/null || exit 2
        set -u
        [[ $(type -t build) == file ]] || { log "edksetup.sh did not put edk2's build on PATH"; exit 2; }
        if [[ ! -f .seamless-basetools ]]; then
            log "building BaseTools"
            make -C BaseTools ARCH=X64 >&2 || exit 2
            touch .seamless-basetools
        fi
        log "build -p OvmfPkg/OvmfPkgX64.dsc -b RELEASE -t GCC5 ${DEBIAN_FLAGS[*]} (-n $jobs)"
        command build -a X64 -t GCC5 -p OvmfPkg/OvmfPkgX64.dsc "${DEBIAN_FLAGS[@]}" -b RELEASE -n "$jobs" >&2
    )
}

prereqs
mkdir -p "$CACHE"
fetch_source
tree=$(prepare_tree)
start=$(date +%s)
status=0
build_ovmf "$tree" 2>&1 | tee "$CACHE/build.log" >&2 || status=$?
((status == 0)) || die "the edk2 build failed (exit $status); see $CACHE/build.log"
elapsed=$(($(date +%s) - start))
mkdir -p "$(dirname "$out")"
cp "$tree/Build/OvmfX64/RELEASE_GCC5/FV/OVMF.fd" "$out.tmp"
mv "$out.tmp" "$out"
log "built $out in ${elapsed}s (series key $key)"
echo "ovmf_build_s $elapsed" >"$(dirname "$out")/build-time"
echo "$out"
