package cli

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// The shell scripts a command run on a server is made of (POSIX sh, GNU coreutils' tail,
// tar and setsid from util-linux, as Debian and Ubuntu servers have them). Each takes its
// values as arguments, so that nothing but paths and the command's own arguments is ever
// on a command line there.

// secretsEntry names the list of a run's env files inside the files it is sent.
const secretsEntry = ".handoff-secrets"

// packFiles is a tar of the command's local files, named as they are placed in the
// working directory on the server, and the list of the env files among them.
//
// Secrets: the values of env files must travel inside the SSH connection only. They go in
// this tar, on the stdin of the session that starts the command, so only paths are ever on
// a command line; they land in the working directory as files of mode 0600, where the
// server's handoff reads them exactly as it does when run there by hand, at the paths the
// config names (rather than on its stdin, which would make a remote run read its config
// differently from a local one). They are removed when the command ends, by the detached
// command itself, so even when the connection is gone by then; when another command of the
// service is still under way there, the last one to end removes them.
func packFiles(l workLayout, files []localFile) (*bytes.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var secrets []string
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, f := range files {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			return nil, fmt.Errorf("read %s to send it to the server: %w", f.Path, err)
		}
		name := l.remote(f.Path)
		if err := add(name, data); err != nil {
			return nil, err
		}
		if f.Secret {
			secrets = append(secrets, name)
		}
	}
	if len(secrets) > 0 {
		if err := add(secretsEntry, []byte(strings.Join(secrets, "\n")+"\n")); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return bytes.NewReader(buf.Bytes()), nil
}

// endScript (no single quote in it: it is inside one), with $run and $work set, hands the env files of an ended run over to the
// last run of the service under way, or removes them all when none is. A run is under way
// while its directory has no exit file and its process lives, or, before it has a pid,
// for its first minute (a run killed with the server is not under way for ever). Run
// directories left by a command whose connection dropped go after a week.
const endScript = `if [ -f "$run/secrets" ]; then cat "$run/secrets" >> "$work/.handoff-run/secrets"; rm -f "$run/secrets"; fi
busy=
for d in "$work"/.handoff-run/*/; do
	if [ "${d%/}" = "$run" ]; then continue
	elif [ -f "$d/exit" ]; then
		if [ -n "$(find "$d" -maxdepth 0 -mtime +7)" ]; then rm -rf -- "$d"; fi
	elif [ -f "$d/pid" ]; then kill -0 "$(cat "$d/pid")" 2>/dev/null && busy=1
	elif [ -n "$(find "$d" -maxdepth 0 -mmin -1)" ]; then busy=1; fi
done
if [ -z "$busy" ] && [ -f "$work/.handoff-run/secrets" ]; then
	while IFS= read -r f; do rm -f -- "$work/$f"; done < "$work/.handoff-run/secrets"
	rm -f "$work/.handoff-run/secrets"
fi`

// startScript receives the command's files on stdin (a tar) into the service's working
// directory, starts the server's handoff, and follows it (followScript).
//
// The run directory comes first: while it has no exit file the run counts as under way,
// and no other run of the service removes the env files it brings. Everything it makes is
// its user's alone (umask 077: the run's output may hold what the app logged). The files an
// earlier run placed and this one does not bring are removed, so that the server's handoff
// reads the files the command has here, never an old copy of one deleted or renamed here.
// Interrupted before handoff has started, it removes what it placed of the env files; once
// handoff runs, the run ends on its own and does that itself (before it writes its exit
// file, which is what a follower waits for before removing the run directory).
//
// handoff runs detached from the SSH session, so that a dropped connection does not end it
// halfway: started from a subshell that exits at once (so it is no descendant of the
// session's processes), in a session of its own (setsid) that ignores the hangup (nohup),
// reading nothing (its secrets are files), writing its stdout, stderr, pid and exit status
// to files in the run directory. It has no terminal there: it prints plain progress lines,
// as it does in CI, and those are what is streamed back. Its wrapper shell traps SIGINT (a
// trap, not an ignore, so that handoff itself takes the signal as it does at a terminal)
// so that it outlives an interrupt to write the exit status.
const startScript = `work=$1; dir=$2; run=$3; bin=$4; shift 4
umask 077
fail() {
	trap - INT TERM HUP
	echo "handoff: on the server: $1" >&2
	[ -f "$run/exit" ] || echo 255 > "$run/exit"
	` + endScript + `
	rm -rf -- "$run"
	exit 1
}
trap 'fail "interrupted before handoff started"' INT TERM HUP
mkdir -p "$run/in" || fail "cannot make ~/$run"
(cd "$run/in" && tar -x -f -) || fail "cannot receive the command's files into ~/$run"
if [ -f "$run/in/` + secretsEntry + `" ]; then mv -f "$run/in/` + secretsEntry + `" "$run/secrets"; fi
(cd "$run/in" && find . -type f) > "$run/files" || fail "cannot list the command's files in ~/$run"
if [ -f "$work/.handoff-run/files" ]; then
	while IFS= read -r f; do
		grep -qxF -- "$f" "$run/files" || rm -f -- "$work/$f"
	done < "$work/.handoff-run/files"
fi
while IFS= read -r f; do
	{ mkdir -p "$work/$(dirname "$f")" && mv -f "$run/in/$f" "$work/$f"; } || fail "cannot place the command's files in ~/$work"
done < "$run/files"
cp "$run/files" "$work/.handoff-run/files.tmp" && mv -f "$work/.handoff-run/files.tmp" "$work/.handoff-run/files" || fail "cannot write ~/$work/.handoff-run/files"
rm -rf -- "$run/in"
mkdir -p "$dir" || fail "cannot make ~/$dir"
run=$(cd "$run" && pwd) && work=$(cd "$work" && pwd) && bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin") || fail "cannot find ~/$run"
cd "$dir" || fail "cannot enter ~/$dir"
(setsid nohup sh -c '
trap : INT
run=$1; work=$2; shift 2
echo $$ > "$run/pid.tmp" && mv "$run/pid.tmp" "$run/pid"
"$@" < /dev/null > "$run/out" 2> "$run/err"
code=$?
` + endScript + `
echo "$code" > "$run/exit.tmp" && mv "$run/exit.tmp" "$run/exit"
exit "$code"
' handoff-run "$run" "$work" "$bin" "$@" > /dev/null 2>&1 < /dev/null &)
i=0
while [ ! -s "$run/pid" ]; do
	i=$((i+1)); if [ "$i" -gt 200 ]; then fail "handoff did not start in 10s"; fi
	sleep 0.05
done
trap - INT TERM HUP
set -- "$run" 0 0
` + followScript

// followScript, with $1 the run directory and $2 and $3 the bytes of its stdout and stderr
// already seen, streams the rest of them until its exit file is written (after both are
// complete) or its process is gone, removes the run directory and exits with the run's
// exit status. tail follows a watcher of that file, a child of this shell, rather than the
// run's own process: once the connection that started it is gone, that one is an orphan
// whose end is not seen where nothing reaps orphans (a zombie still looks alive to tail
// --pid). A follower cut off by a dropped connection leaves the run directory as it is.
const followScript = `run=$1; p=$(cat "$run/pid")
( while [ ! -f "$run/exit" ] && kill -0 "$p" 2>/dev/null; do sleep 0.1; done ) & w=$!
tail -s 0.1 -c +$(($2 + 1)) -f --pid="$w" "$run/out" & t=$!
tail -s 0.1 -c +$(($3 + 1)) -f --pid="$w" "$run/err" >&2
wait "$t"
if [ ! -f "$run/exit" ]; then
	echo "handoff: the command on the server ended without an exit status (killed?)" >&2
	exit 1
fi
code=$(cat "$run/exit")
rm -rf -- "$run"
exit "$code"`
