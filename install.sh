#!/bin/sh
# Installs handoff: downloads the archive for this machine (linux or
# darwin, amd64 or arm64) and the release's checksums, checks the
# archive's sha256 against them, and only then puts the binary in place.
#
#   curl -fsSL https://raw.githubusercontent.com/handoff-dev/handoff/main/install.sh | sh
#
# HANDOFF_VERSION      the release to install, like v1.2.3 (default: the latest)
# HANDOFF_INSTALL_DIR  where the binary goes (default /usr/local/bin)
# HANDOFF_BASE_URL     where the release's files are (default: the GitHub
#                      release; or, say, a dist/ of `make release-snapshot`
#                      served over HTTP)
set -eu

fail() {
	echo "install.sh: $*" >&2
	exit 1
}

repo=https://github.com/handoff-dev/handoff
version=${HANDOFF_VERSION:-latest}
if [ "$version" = latest ]; then
	default_base=$repo/releases/latest/download
else
	default_base=$repo/releases/download/$version
fi
base=${HANDOFF_BASE_URL:-$default_base}
base=${base%/}
dir=${HANDOFF_INSTALL_DIR:-/usr/local/bin}

machine="$(uname -s)/$(uname -m)"
unknown="no handoff build for $machine (there are Linux and Darwin, on x86_64 and arm64): build it from source, see $repo"
case "${machine%/*}" in
Linux) os=linux ;;
Darwin) os=darwin ;;
*) fail "$unknown" ;;
esac
case "${machine#*/}" in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*) fail "$unknown" ;;
esac
archive=handoff_${os}_${arch}.tar.gz

if command -v curl >/dev/null 2>&1; then
	download() { curl -fsSL --retry 2 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
	download() { wget -q -O "$2" "$1"; }
else
	fail "neither curl nor wget is installed: install one of them"
fi
if command -v sha256sum >/dev/null 2>&1; then
	sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
	sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
	fail "neither sha256sum nor shasum is installed: install coreutils (or perl's shasum)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/handoff-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

download "$base/checksums.txt" "$tmp/checksums.txt" 2>/dev/null ||
	fail "download failed: $base/checksums.txt (is $version a release? is the network up?)"
download "$base/$archive" "$tmp/$archive" 2>/dev/null ||
	fail "download failed: $base/$archive (is $version a release with a $os/$arch build?)"

want=$(awk -v f="$archive" '$2 == f || $2 == "*" f { print $1 }' "$tmp/checksums.txt")
[ -n "$want" ] || fail "$base/checksums.txt lists no $archive: nothing installed"
got=$(sha256 "$tmp/$archive")
[ "$got" = "$want" ] || fail "checksum mismatch for $archive (sha256 $got, checksums.txt says $want): nothing installed; download it again"

mkdir "$tmp/x"
tar -xzf "$tmp/$archive" -C "$tmp/x" handoff 2>/dev/null || fail "$archive holds no handoff binary: nothing installed"

mkdir -p "$dir" 2>/dev/null || fail "cannot create $dir: run as root (curl ... | sudo sh), or set HANDOFF_INSTALL_DIR=\$HOME/.local/bin"
# Copied beside the old binary, then renamed over it: a handoff running
# now keeps its file, and nothing ever sees half a binary.
cp "$tmp/x/handoff" "$dir/.handoff.new" 2>/dev/null ||
	fail "cannot write to $dir: run as root (curl ... | sudo sh), or set HANDOFF_INSTALL_DIR=\$HOME/.local/bin"
chmod 0755 "$dir/.handoff.new"
mv -f "$dir/.handoff.new" "$dir/handoff" || { rm -f "$dir/.handoff.new"; fail "cannot replace $dir/handoff"; }

echo "installed $dir/handoff ($archive, sha256 checked)"
"$dir/handoff" version 2>/dev/null || true
case ":$PATH:" in
*":$dir:"*) ;;
*) echo "note: $dir is not in PATH: add it, or run $dir/handoff" ;;
esac
