#!/usr/bin/env bash
# Record the tracekit QEMU sample: build the bare-metal guest in guest/, run it under
# Debian 12's QEMU 7.2 (TCG) three times, and write the logs next to this script.
#
#   sample-traces/qemu/record.sh            # (re)record into sample-traces/qemu/
#   TK_OUT=/tmp/x sample-traces/qemu/record.sh   # write somewhere else
#
# Debian packages it needs (installed with apt-get when missing; root or sudo):
#   qemu-system-arm              qemu-system-aarch64 (Debian 12: QEMU 7.2, log trace backend,
#                                TCG plugin support compiled in, no plugin shipped)
#   gcc-aarch64-linux-gnu        cross compiler for the guest
#   binutils-aarch64-linux-gnu   cross assembler/linker/objdump
#   gcc libc6-dev pkg-config libglib2.0-dev
#                                to build QEMU's contrib/plugins/execlog.c as a host .so
#   xz-utils                     to unpack the Debian source tarball
# Network: `apt-get source --download-only qemu=<installed source version>` through a
# private apt configuration (deb-src lines in a temp dir; the system's apt sources are
# not changed). Only include/qemu/qemu-plugin.h and contrib/plugins/execlog.c are taken
# from that source, into a temp dir; nothing built from QEMU's sources is kept.
#
# Environment: TK_OUT (output dir, default: this script's dir), TK_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), TK_SECURITY_MIRROR (default
# http://deb.debian.org/debian-security), TK_KEEP_TMP=1 (keep the temp dir).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${TK_OUT:-$HERE}
DEBIAN_MIRROR=${TK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${TK_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=(qemu-system-arm gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
          gcc libc6-dev pkg-config libglib2.0-dev xz-utils)

say() { printf 'record.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- 1. packages ---------------------------------------------------------------------
install_missing() {
    local missing=() p sudo=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages ${missing[*]} and not root"
        sudo=(sudo)
    fi
    say "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
}
install_missing

WORK=$(mktemp -d /tmp/tracekit-record.XXXXXX)
cleanup() { if [ "${TK_KEEP_TMP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# ---- 2. the guest ------------------------------------------------------------------------
say "building the guest"
aarch64-linux-gnu-gcc -nostdlib -ffreestanding -static -mgeneral-regs-only \
    -Wl,-T,"$HERE/guest/guest.ld" -Wl,--build-id=none -Wl,-z,max-page-size=4096 \
    -Wl,--no-warn-rwx-segments -o "$WORK/guest.elf" "$HERE/guest/guest.S"
(cd "$WORK" && aarch64-linux-gnu-objdump -d guest.elf) > "$WORK/guest.lst"

# ---- 3. the execlog plugin, built against the installed QEMU's own header ----------------
QEMU_SRC_VERSION=$(dpkg-query -W -f='${source:Version}' qemu-system-arm)
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
say "fetching Debian source qemu=$QEMU_SRC_VERSION ($CODENAME) for qemu-plugin.h and execlog.c"
APTDIR=$WORK/apt
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$WORK/src"
cat > "$APTDIR/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $CODENAME main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $CODENAME-updates main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY_MIRROR $CODENAME-security main
EOF
APTOPT=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=$APTDIR/none"
        -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
        -o "Debug::NoLocking=1")
[ "$(id -u)" -eq 0 ] && APTOPT+=(-o "APT::Sandbox::User=root")
apt-get "${APTOPT[@]}" -qq update
(cd "$WORK/src" && apt-get "${APTOPT[@]}" -qq source --download-only "qemu=$QEMU_SRC_VERSION")
ORIG=$(ls "$WORK"/src/qemu_*.orig.tar.*)
DEBTAR=$(ls "$WORK"/src/qemu_*.debian.tar.*)
tar -xf "$ORIG" -C "$WORK/src" --wildcards '*/include/qemu/qemu-plugin.h' '*/contrib/plugins/execlog.c'
# Debian's patches must not touch the two files we use (true for 7.2+dfsg-7+deb12u18).
tar -xf "$DEBTAR" -C "$WORK/src" debian/patches
if grep -l -E '^\+\+\+ [^ ]*(include/qemu/qemu-plugin\.h|contrib/plugins/execlog\.c)' \
        "$WORK"/src/debian/patches/* 2>/dev/null; then
    die "a Debian patch changes qemu-plugin.h or execlog.c; apply debian/patches first"
fi
QSRC=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -1)
[ -n "$QSRC" ] || die "no qemu-* directory in the source tarball"
gcc -O2 -fPIC -Wall -shared $(pkg-config --cflags glib-2.0) -I"$QSRC/include/qemu" \
    -o "$WORK/libexeclog.so" "$QSRC/contrib/plugins/execlog.c" $(pkg-config --libs glib-2.0)

# ---- 4. record ---------------------------------------------------------------------------
# The trace events: MMIO as QEMU's memory core dispatches it, fw_cfg (whose DMA engine
# writes guest RAM), and kvm_* (none fire under TCG; the same list serves a KVM run).
cat > "$WORK/events" <<'EOF'
memory_region_ops_*
fw_cfg_select
fw_cfg_read
kvm_*
EOF
# -nic none: the default virtio NIC wants efi-virtio.rom, which is only a recommended package.
QEMU=(qemu-system-aarch64 -M virt -cpu cortex-a57 -m 128M -smp 1
      -nographic -nic none -no-reboot -kernel "$WORK/guest.elf")

shell_words() {  # print the arguments as one shell command line (quoted where needed)
    local a out=""
    for a in "$@"; do
        case $a in
            *[!A-Za-z0-9_./=+:,@%-]*) out+="'${a//\'/\'\\\'\'}' " ;;
            *) out+="$a " ;;
        esac
    done
    printf '%s\n' "${out% }"
}
run() {  # run NAME QEMU-ARGS...: one recording into $WORK/NAME
    local name=$1; shift
    say "recording $name"
    shell_words "${QEMU[@]}" "$@" | sed "s|$WORK|\$WORK|g" >> "$WORK/commands.txt"
    timeout 60 "${QEMU[@]}" "$@" -D "$WORK/$name" < /dev/null > "$WORK/$name.uart" \
        || die "QEMU failed for $name"
    grep -q '^tk' "$WORK/$name.uart" || die "the guest did not finish ($name)"
}
: > "$WORK/commands.txt"
# (1) guest side: execlog plugin only (one line per executed instruction)
run execlog.log -accel tcg -plugin "$WORK/libexeclog.so" -d plugin
# (2) host side: trace events, log backend, with -msg timestamp=on (TID@SEC.USEC: prefix)
run host-events.log -accel tcg -trace "events=$WORK/events" -msg timestamp=on
# (3) both in one file, in the order QEMU logged them (no timestamps), plus `-d cpu`
# register dumps right before each msr/dc/ic instruction, so that the value written to a
# system register and the address of each cache-maintenance operation are in the log
# (QEMU 7.2's execlog cannot print registers). -singlestep makes every instruction its
# own translation block and nochain sends each through the logging path; -dfilter keeps
# the dumps to those instructions' PCs (it filters -d cpu only, not plugin or trace output).
DFILTER=$(awk -F'\t' 'NF >= 3 && $3 ~ /^(msr|dc|ic)$/ { pc = $1; gsub(/[ :]/, "", pc);
          printf "%s0x%s+4", sep, pc; sep = "," }' "$WORK/guest.lst")
[ -n "$DFILTER" ] || die "no msr/dc/ic instruction found in guest.lst"
if qemu-system-aarch64 -help | grep -q -- '^-singlestep'; then
    ONE_INSN=(-accel tcg -singlestep)            # QEMU 7.2 (Debian 12)
else
    ONE_INSN=(-accel tcg,one-insn-per-tb=on)     # QEMU 8.1+ renamed it
fi
run combined.log -plugin "$WORK/libexeclog.so" -d plugin,cpu,nochain "${ONE_INSN[@]}" \
    -dfilter "$DFILTER" -trace "events=$WORK/events"

# the definitions of the traced events, as shipped in this QEMU (for importers)
{
    echo "# From /usr/share/qemu/trace-events-all of qemu-system-common $(dpkg-query -W -f='${Version}' qemu-system-common):"
    echo "# the events record.sh enables (memory_region_ops_*, fw_cfg_select, fw_cfg_read, kvm_*)."
    grep -E '^(memory_region_ops_|fw_cfg_select\(|fw_cfg_read\(|kvm_)' /usr/share/qemu/trace-events-all
} > "$WORK/trace-events"

{
    echo "recorded: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm)"
    echo "qemu: $(qemu-system-aarch64 --version | head -1)"
    echo "qemu-system-arm: $(dpkg-query -W -f='${Version}' qemu-system-arm) (source qemu $QEMU_SRC_VERSION)"
    echo "plugin: contrib/plugins/execlog.c and include/qemu/qemu-plugin.h from $(basename "$ORIG")"
    echo "cross gcc: $(aarch64-linux-gnu-gcc --version | head -1)"
    echo "commands (\$WORK is a temp dir):"
    sed 's/^/  /' "$WORK/commands.txt"
} > "$WORK/recording-info.txt"

mkdir -p "$OUT"
cp "$WORK/guest.elf" "$WORK/guest.lst" "$WORK/execlog.log" "$WORK/host-events.log" \
   "$WORK/combined.log" "$WORK/trace-events" "$WORK/recording-info.txt" "$OUT/"
say "wrote $(cd "$OUT" && wc -l execlog.log host-events.log combined.log | tail -1 | awk '{print $1}') log lines to $OUT"
