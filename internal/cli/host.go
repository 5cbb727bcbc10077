package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/remote"
)

// Running a command on a server (--host): the local handoff does not run the command
// itself. Over one SSH connection it puts the same build of handoff on the server, copies
// the local files the command reads into a working directory there, and runs the same
// command on the server, detached from the connection, streaming its output back. What
// happens on the server is what happens when the command is run there by hand: the lock,
// the history, the Caddyfile and the proxy socket are the server's.

// hostLocal as --host (or HANDOFF_HOST) runs the command here even when handoff.yml
// names a host: the server's own handoff is always started with it.
const hostLocal = "local"

// serverWorkDir holds each service's working directory on a server, from the home dir.
const serverWorkDir = ".cache/handoff/work"

// Environment variables that say where the SSH setup is, for tests and unusual setups.
const (
	envHost       = "HANDOFF_HOST"
	envSSHConfig  = "HANDOFF_SSH_CONFIG"      // the only ssh config read, as ssh -F
	envKnownHosts = "HANDOFF_SSH_KNOWN_HOSTS" // the only known_hosts file
	envSSHTrace   = "HANDOFF_SSH_TRACE"       // a file every command sent to the server is appended to
)

// errRemoteExit carries the exit status of a command run on a server: it is already
// reported (the server's own stderr), so Main only exits with it.
type errRemoteExit struct{ code int }

func (e *errRemoteExit) Error() string { return "exit " + strconv.Itoa(e.code) }

// remoteExitCode is the status of a command that ran on a server.
func remoteExitCode(err error) (int, bool) {
	var re *errRemoteExit
	if errors.As(err, &re) {
		return re.code, true
	}
	return 0, false
}

// viaHost runs the command on the server --host, HANDOFF_HOST or handoff.yml's host:
// names (in that order), instead of here; with none it lets the command run here.
func (c *common) viaHost(cmd *cobra.Command, args []string) error {
	switch cmd.Name() {
	case "completion", "help", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd:
		return nil
	}
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	host := c.hostSetting(cmd, cwd)
	if host == "" || host == hostLocal {
		return nil
	}
	t, err := remote.Parse(host)
	if err != nil {
		return fmt.Errorf("%w: --host: %v", errUsage, err)
	}
	if f := cmd.Flags().Lookup("write"); cmd.Name() == "init" && f != nil && f.Changed {
		// It would write into the working directory handoff keeps on the server.
		return fmt.Errorf("%w: init --write with --host would write handoff.yml on the server: run handoff init --host %s > handoff.yml to write it here", errUsage, t)
	}
	h := &hostRun{
		common: c, target: t, cwd: cwd,
		args:    remoteArgs(cmd, args),
		page:    pageFile(cmd, cwd),
		version: buildVersion(debug.ReadBuildInfo),
		binary:  defaultBinarySource(),
	}
	if cmd.Name() == "deploy" && cmd.Parent() == cmd.Root() {
		h.images = c.deployImages(cmd.Context(), args)
	}
	h.signals = make(chan os.Signal, 4)
	signal.Notify(h.signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(h.signals)
	code, err := h.run(cmd.Context())
	if err != nil {
		return err
	}
	return &errRemoteExit{code: code}
}

// hostSetting is the server the command is for: --host, HANDOFF_HOST, or host: in the
// local handoff.yml.
func (c *common) hostSetting(cmd *cobra.Command, cwd string) string {
	if f := cmd.Flags().Lookup("host"); f != nil && f.Changed {
		return c.host
	}
	if h := os.Getenv(envHost); h != "" {
		return h
	}
	file := config.DefaultFile
	switch {
	case len(c.files) > 1:
		return ""
	case len(c.files) == 1:
		file = c.files[0]
	}
	if compose.IsComposeFile(abs(cwd, file)) {
		return ""
	}
	f, err := config.Load(abs(cwd, file))
	if err != nil {
		return "" // reported when the command reads it
	}
	return f.Host
}

// remoteArgs are the command's arguments as the server's handoff takes them: the same
// command and flags as given, with --host local (the server's own handoff.yml may name a
// host too) instead of --host. Paths of local files given as flags stay as written when
// relative (the command runs in the same place relative to them there).
func remoteArgs(cmd *cobra.Command, args []string) []string {
	out := append(strings.Fields(cmd.CommandPath())[1:], "--host="+hostLocal)
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name == "host" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+f.Name+"="+v)
			}
			return
		}
		out = append(out, "--"+f.Name+"="+f.Value.String())
	})
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			return append(append(out, "--"), args...)
		}
	}
	return append(out, args...)
}

// localPathFlags are the flags that name local files (or the directory they are in).
var localPathFlags = []string{"--file=", "--env-file=", "--project-directory=", "--page="}

// pageFile is the local file `maintenance on --page` names, which goes to the server with
// the command's other files ("" if none).
func pageFile(cmd *cobra.Command, cwd string) string {
	if f := cmd.Flags().Lookup("page"); f != nil && f.Changed && f.Value.String() != "" {
		return abs(cwd, f.Value.String())
	}
	return ""
}

// relativePaths writes the local files that args name by an absolute path relative to cwd:
// the files are placed on the server as they are here relative to each other and to cwd,
// and the command runs there in the place of cwd.
func relativePaths(args []string, cwd string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		for _, f := range localPathFlags {
			if v, ok := strings.CutPrefix(a, f); ok && filepath.IsAbs(v) {
				if rel, err := filepath.Rel(cwd, v); err == nil {
					out[i] = f + filepath.ToSlash(rel)
				}
			}
		}
	}
	return out
}

// server is what a hostRun needs of the SSH connection (a *remote.Conn).
type server interface {
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	Upload(ctx context.Context, r io.Reader, file string, mode fs.FileMode) error
	Done() <-chan struct{}
	Close() error
	String() string
}

// hostRun is one command run on a server.
type hostRun struct {
	*common
	target  remote.Target
	cwd     string
	args    []string // for the server's handoff
	version versionInfo
	binary  binarySource
	conn    server
	trace   func(cmd string) // every command sent, for HANDOFF_SSH_TRACE
	// signals are the ending signals that came here (nil in tests): Ctrl-C (SIGINT)
	// interrupts the server's run; SIGTERM and SIGHUP (a CI job cancelled, a terminal
	// closed) only end this side, and the run goes on there, as when the connection drops.
	signals chan os.Signal
	page    string // maintenance on --page: a local file the command reads
	// images are what a deploy sends the server first (host_image.go); dialEngine
	// reaches the local engine (nil: docker.New).
	images     []imageToSend
	dialEngine func(context.Context) (localEngine, error)
}

func (h *hostRun) run(ctx context.Context) (int, error) {
	if h.conn == nil {
		if err := h.dial(ctx); err != nil {
			return 0, err
		}
		defer h.conn.Close()
	}
	bin, err := h.ensureBinary(ctx)
	if err != nil {
		return 0, err
	}
	if err := h.sendImages(ctx, bin); err != nil {
		return 0, err
	}
	files := h.commandFiles(h.cwd)
	if h.page != "" {
		files = append(files, localFile{Path: h.page})
	}
	layout := newWorkLayout(h.cwd, files)
	work := serverWorkDir + "/" + h.workName(h.cwd)
	runDir := work + "/.handoff-run/" + time.Now().UTC().Format("20060102T150405") + "-" + randomID()
	in, err := packFiles(layout, files)
	if err != nil {
		return 0, err
	}
	// One session for all of it: the files arrive on its stdin, the command starts
	// detached, and its output streams back on the session's stdout and stderr.
	start := "sh -c " + remote.Quote(startScript) + " start " +
		remote.Command(append([]string{work, path.Join(work, layout.cwd), runDir, bin}, relativePaths(h.args, h.cwd)...)...)
	return h.follow(ctx, start, in, runDir)
}

func (h *hostRun) dial(ctx context.Context) error {
	opts := remote.Options{KnownHostsPath: os.Getenv(envKnownHosts), Warn: func(msg string) { fmt.Fprintln(h.io.Err, "ssh: "+msg) }}
	if p := os.Getenv(envSSHConfig); p != "" {
		opts.ConfigPath, opts.SystemConfigPath = p, os.DevNull
	}
	conn, err := remote.Dial(ctx, h.target, opts)
	if err != nil {
		return err
	}
	h.conn = conn
	if p := os.Getenv(envSSHTrace); p != "" {
		var mu sync.Mutex
		h.trace = func(cmd string) {
			mu.Lock()
			defer mu.Unlock()
			if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
				fmt.Fprintf(f, "%s %s\n---\n", time.Now().UTC().Format("15:04:05.000"), cmd)
				f.Close()
			}
		}
	}
	return nil
}

// runCmd runs cmd on the server; every command goes through here (and the trace).
func (h *hostRun) runCmd(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if h.trace != nil {
		h.trace(cmd)
	}
	return h.conn.Run(ctx, cmd, stdin, stdout, stderr)
}

// script runs a short command and fails with its first line of stderr; what says what it
// was doing.
func (h *hostRun) script(ctx context.Context, what, cmd string, stdout io.Writer) error {
	var errb bytes.Buffer
	code, err := h.runCmd(ctx, cmd, nil, stdout, &errb)
	if err != nil {
		return err
	}
	if code != 0 {
		msg, _, _ := strings.Cut(strings.TrimSpace(errb.String()), "\n")
		return fmt.Errorf("%s on %s: exit %d: %s", what, h.conn, code, msg)
	}
	return nil
}

func (h *hostRun) uploadFile(ctx context.Context, src, dst string, mode fs.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if h.trace != nil {
		h.trace("upload " + dst)
	}
	return h.conn.Upload(ctx, f, dst, mode)
}

// ensureBinary makes sure the server has this build of handoff, and returns its path.
func (h *hostRun) ensureBinary(ctx context.Context) (string, error) {
	bin := serverBinary(h.version)
	look := func() (probe, error) {
		var out bytes.Buffer
		if err := h.script(ctx, "look for handoff", probeScript(bin), &out); err != nil {
			return probe{}, err
		}
		return parseProbe(out.String()), nil
	}
	p, err := look()
	if err != nil {
		return "", err
	}
	if sameBuild(h.version, p, "") && exact(h.version) {
		return bin, nil
	}
	src, err := h.binary.find(h.version, p)
	if err != nil {
		// A build whose version does not name its bytes (uncommitted changes, no commit)
		// is known to be the server's only by its sha256, which needs the file.
		return "", err
	}
	sum, err := fileSum(src)
	if err != nil {
		return "", err
	}
	if sameBuild(h.version, p, sum) {
		return bin, nil
	}
	fmt.Fprintf(h.io.Err, "put handoff %s on %s\n", h.version.Version, h.target)
	if err := h.uploadFile(ctx, src, bin, 0o755); err != nil {
		return "", err
	}
	if p, err = look(); err != nil {
		return "", err
	}
	if !sameBuild(h.version, p, sum) {
		return "", fmt.Errorf("handoff put on %s as ~/%s does not run there (uname: %s): build handoff for linux with CGO_ENABLED=0", h.target, bin, p.Machine)
	}
	// Best effort, and never in the way of the command: a failure leaves them for the
	// next upload to remove.
	_, _ = h.runCmd(ctx, pruneScript(bin), nil, nil, nil)
	return bin, nil
}

// follow runs start, which streams the run's output until it ends, and returns its exit
// status. Ctrl-C here is passed on as SIGINT to the server's handoff, whose end is then
// streamed as usual, from where the stream had got to.
func (h *hostRun) follow(ctx context.Context, start string, stdin io.Reader, runDir string) (int, error) {
	out, errw := &countWriter{w: h.io.Out}, &countWriter{w: h.io.Err}
	code, err := h.runCmd(ctx, start, stdin, out, errw)
	if err != nil && ctx.Err() != nil && h.connUp() {
		if sig := h.signalled(); sig == syscall.SIGTERM || sig == syscall.SIGHUP {
			name := map[os.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP"}[sig]
			return 0, fmt.Errorf("%w: stopped here by %s; the command goes on on the server (only Ctrl-C interrupts it there): see handoff status --host %s", context.Canceled, name, h.target)
		}
		// Interrupted here: interrupt it there, and see it end, for as long as it takes,
		// unless a second signal says to stop following.
		after, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		if h.signals != nil {
			go func() {
				select {
				case <-h.signals:
					cancel()
				case <-after.Done():
				}
			}()
		}
		h.runCmd(after, `kill -INT -- -"$(cat `+remote.Quote(runDir+"/pid")+`)"`, nil, nil, nil)
		again := "sh -c " + remote.Quote(followScript) + " follow " + remote.Command(runDir, strconv.FormatInt(out.count(), 10), strconv.FormatInt(errw.count(), 10))
		code, err = h.runCmd(after, again, nil, out, errw)
		if err != nil && after.Err() != nil {
			return 0, fmt.Errorf("%w: stopped following the interrupted command on %s, which is still ending there: see handoff status --host %s", context.Canceled, h.target, h.target)
		}
	}
	if err != nil {
		if h.connUp() && ctx.Err() == nil {
			// A session cut short is most often the connection going: give it a
			// moment to be seen gone.
			select {
			case <-h.conn.Done():
			case <-time.After(3 * time.Second):
			}
		}
		if h.connUp() {
			return 0, err
		}
		return 0, fmt.Errorf("lost the connection to %s (%v): the command goes on on the server; see handoff status --host %s", h.target, err, h.target)
	}
	return code, nil
}

// countWriter counts what has been written through it.
type countWriter struct {
	w  io.Writer
	mu sync.Mutex
	n  int64
}

// count is how much has been written so far.
func (c *countWriter) count() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// signalled is the ending signal that came here, if one came (it is seen a moment after
// the context it cancelled).
func (h *hostRun) signalled() os.Signal {
	if h.signals == nil {
		return nil
	}
	select {
	case sig := <-h.signals:
		return sig
	case <-time.After(200 * time.Millisecond):
		return nil
	}
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (h *hostRun) connUp() bool {
	select {
	case <-h.conn.Done():
		return false
	default:
		return true
	}
}

func randomID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
