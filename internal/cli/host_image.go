package cli

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/docker"
	"github.com/handoff-dev/handoff/internal/remote"
)

// Images without a registry (--host): before a deploy runs on the server, each image it
// deploys that came from no registry (on the local engine with no registry digest: built
// here, never pushed or pulled), or that the server has no image of under that tag, goes
// there, over the command's one connection, with only the layers the server lacks: the
// server's handoff says what it has (`image present`), a `docker save` here is cut down
// to the rest and streamed gzip'd to the server's `image load`. An image a registry has,
// of which the server has another image under the tag, is left to the server, as before
// (a stale copy here must not replace a newer one there); it pulls with its credentials. A handoff.yml with build: is built here, as a local deploy builds it, and
// the server deploys the image built (--image, --pull=never). An image of another
// platform than the server's engine is not sent: it would not run there.

// imageToSend is an image a deploy run on a server deploys.
type imageToSend struct {
	ref   string
	build *deploy.BuildSpec // non-nil: built here first
}

// localEngine is what sending images needs of the local engine (a *docker.Runtime).
type localEngine interface {
	LocalImage(ctx context.Context, ref string) (docker.LocalImage, error)
	SaveImage(ctx context.Context, ref string, w io.Writer) error
	Build(ctx context.Context, spec deploy.BuildSpec, tag string, out io.Writer) error
	Close() error
}

func dialLocalEngine(ctx context.Context) (localEngine, error) { return docker.New(ctx) }

// deployImages are the images a deploy of services deploys, read from the local files
// (nil when they do not read: the server's handoff says why).
func (c *common) deployImages(ctx context.Context, services []string) []imageToSend {
	services = slices.DeleteFunc(slices.Clone(services), func(s string) bool { return strings.Contains(s, "://") }) // --verify's URL
	ts, err := c.targets(ctx, services)
	if err != nil {
		fmt.Fprintf(c.io.Err, "images not looked at here: %v; the server's deploy reads its own files\n", firstLine(err.Error()))
		return nil
	}
	var out []imageToSend
	for _, t := range ts {
		svc := t.Service
		if c.overrides.Image != "" {
			svc.Build = nil
		}
		if svc.Image == "" {
			continue
		}
		if t.Compose && svc.Build != nil {
			// A compose service's build: is left to the server, as before (its context
			// is not sent): the server builds it whatever is sent.
			continue
		}
		out = append(out, imageToSend{ref: svc.Image, build: svc.Build})
	}
	return out
}

// sendImages builds what is to be built here and puts on the server each image that
// came from no registry and is not tagged so there. An image the server cannot pull
// that is not sent stops the command (the server would deploy what it has under the
// tag, or fail later); with no local engine nothing can be known, and the server pulls.
func (h *hostRun) sendImages(ctx context.Context, bin string) error {
	if len(h.images) == 0 {
		return nil
	}
	dial := h.dialEngine
	if dial == nil {
		dial = dialLocalEngine
	}
	eng, err := dial(ctx)
	if err != nil {
		for _, img := range h.images {
			if img.build != nil {
				return fmt.Errorf("build %s here for %s: %w", img.ref, h.target, err)
			}
		}
		for _, img := range h.images {
			fmt.Fprintf(h.io.Err, "image %s not sent to %s: %v; the server's deploy pulls it from its registry\n", img.ref, h.target, err)
		}
		return nil
	}
	defer eng.Close()
	var server *docker.ServerImages
	for _, img := range h.images {
		if img.build != nil {
			if err := eng.Build(ctx, *img.build, img.ref, h.io.Err); err != nil {
				return err
			}
			h.args = withFlags(h.args, "--image="+img.ref, "--pull=never")
		}
		if strings.Contains(img.ref, "@") {
			continue // by digest: a load does not keep the registry's digest, the server pulls it
		}
		local, err := eng.LocalImage(ctx, img.ref)
		if cerrdefs.IsNotFound(err) {
			continue // not here: the server pulls it from its registry, as before
		}
		if err != nil {
			fmt.Fprintf(h.io.Err, "image %s not sent to %s: %v; the server's deploy pulls it from its registry\n", img.ref, h.target, err)
			continue
		}
		if server == nil {
			s, err := h.serverImages(ctx, bin)
			if err != nil {
				if img.build == nil && len(local.RepoDigests) > 0 {
					fmt.Fprintf(h.io.Err, "image %s not sent to %s: %v; the server's deploy pulls it from its registry\n", img.ref, h.target, err)
					continue
				}
				return h.notDeployed(img.ref, err)
			}
			server = &s
		}
		if server.Tagged(local.ID, img.ref) {
			fmt.Fprintf(h.io.Err, "image %s on %s already: nothing sent\n", img.ref, h.target)
			continue
		}
		if there := server.TagID(img.ref); img.build == nil && len(local.RepoDigests) > 0 && there != "" {
			// Both have a registry's image of that tag, not the same: the server's is the
			// one it deploys, as before (a stale copy here must not replace a newer one
			// there). One built here for this deploy is sent whatever: an engine with the
			// containerd image store lists digests for images it built, too.
			fmt.Fprintf(h.io.Err, "image %s here is not %s's image of that tag, which it deploys (pull: always fetches the registry's newest; a tag of its own for each build sends yours)\n", img.ref, h.target)
			continue
		}
		if local.Platform != "" && server.Platform != "" && local.Platform != server.Platform {
			if img.build == nil && len(local.RepoDigests) > 0 {
				// A registry's image pulled here for this machine (postgres:16 on an arm64
				// Mac): the server pulls its own platform's.
				fmt.Fprintf(h.io.Err, "image %s is %s here and %s runs %s: not sent, the server pulls it from its registry\n", img.ref, local.Platform, h.target, server.Platform)
				continue
			}
			return fmt.Errorf("%w: image %s is %s here and %s runs %s: nothing sent, nothing was deployed; build it for the server (docker build --platform %s, or DOCKER_DEFAULT_PLATFORM=%s) or push it to a registry the server pulls from",
				deploy.ErrConfig, img.ref, local.Platform, h.target, server.Platform, server.Platform, server.Platform)
		}
		if err := h.sendImage(ctx, eng, bin, img.ref, server.Has()); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: stopped sending image %s to %s; nothing was deployed", ctx.Err(), img.ref, h.target)
			}
			return h.notDeployed(img.ref, err)
		}
		// The next image (a compose project's) may share these layers.
		server.Chains = append(server.Chains, docker.ChainIDs(local.DiffIDs)...)
		if server.Images == nil {
			server.Images = map[string][]string{}
		}
		server.Images[local.ID] = append(server.Images[local.ID], img.ref)
	}
	return nil
}

// notDeployed is the error of an image from no registry that could not be sent.
func (h *hostRun) notDeployed(ref string, err error) error {
	return fmt.Errorf("image %s not sent to %s: %w; nothing was deployed (the image is in no registry the server could pull it from)", ref, h.target, err)
}

// withFlags puts flags in the server's command line right after --host=local, before the
// command's own flags (which win when given twice).
func withFlags(args []string, flags ...string) []string {
	i := slices.Index(args, "--host="+hostLocal)
	return slices.Concat(args[:i+1], flags, args[i+1:])
}

// serverImages asks the server's handoff what its engine holds.
func (h *hostRun) serverImages(ctx context.Context, bin string) (docker.ServerImages, error) {
	var out bytes.Buffer
	if err := h.script(ctx, "list the server's images", remote.Command(bin, "image", "present", "--host="+hostLocal), &out); err != nil {
		return docker.ServerImages{}, err
	}
	var s docker.ServerImages
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		return s, fmt.Errorf("list the server's images on %s: %w", h.target, err)
	}
	return s, nil
}

// sendImage saves ref here and streams it to the server's engine without the layers
// have says are there; an engine that refuses that (one with the containerd image store
// wants every layer) is sent the whole image once.
func (h *hostRun) sendImage(ctx context.Context, eng localEngine, bin, ref string, have func(string) bool) error {
	saved, err := createSaveFile()
	if err != nil {
		return err
	}
	defer os.Remove(saved.Name())
	defer saved.Close()
	if err := eng.SaveImage(ctx, ref, saved); err != nil {
		return err
	}
	red, sent, err := h.loadOnServer(ctx, bin, saved, have)
	whole := ""
	if err != nil && red.Sent < red.Layers && !errors.Is(err, errLost) && !errors.Is(err, errCutHere) {
		whole = fmt.Sprintf(" (its engine refused the image without the layers it has: %v; sent whole)", err)
		red, sent, err = h.loadOnServer(ctx, bin, saved, func(string) bool { return false })
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(h.io.Err, "image %s to %s: %d of %d layers sent, %s (all layers: %s)%s\n",
		ref, h.target, red.Sent, red.Layers, byteSize(sent), byteSize(red.LayerBytes), whole)
	return nil
}

// createSaveFile is a new file for a `docker save` in the user's cache directory
// (~/.cache/handoff/tmp): the whole image lands there, and the temp directory is RAM
// (tmpfs) on many systems.
func createSaveFile() (*os.File, error) {
	dir := os.TempDir()
	if d, err := os.UserCacheDir(); err == nil {
		dir = filepath.Join(d, "handoff", "tmp")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make a directory for the image saved here: %w", err)
	}
	sweepSaveFiles(dir, time.Now().Add(-staleSave))
	return os.CreateTemp(dir, "image-*.tar")
}

// staleSave is the age past which a saved image is one a killed handoff left: a send
// removes its own file when it ends, even at Ctrl-C, but not at kill -9.
const staleSave = 24 * time.Hour

// sweepSaveFiles removes the saved images in dir last written before cutoff.
func sweepSaveFiles(dir string, cutoff time.Time) {
	old, _ := filepath.Glob(filepath.Join(dir, "image-*.tar"))
	for _, f := range old {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().Before(cutoff) {
			_ = os.Remove(f)
		}
	}
}

var (
	// errLost is a load whose session ended without an exit status (the connection).
	errLost = errors.New("the session ended")
	// errCutHere is a saved image that could not be cut down and streamed here.
	errCutHere = errors.New("cut down the image saved here")
)

// loadOnServer streams the reduced tar to the server's `image load`; sent is the bytes
// that crossed (gzip'd). A failure here is returned before what the server said of the
// stream it cut short.
func (h *hostRun) loadOnServer(ctx context.Context, bin string, saved *os.File, have func(string) bool) (docker.Reduced, int64, error) {
	pr, pw := io.Pipe()
	wire := &countWriter{w: pw}
	type cut struct {
		red docker.Reduced
		err error
	}
	done := make(chan cut, 1)
	go func() {
		gz := gzip.NewWriter(wire)
		red, err := docker.ReduceSave(saved, gz, have)
		if err == nil {
			err = gz.Close()
		}
		pw.CloseWithError(err)
		done <- cut{red, err}
	}()
	var outb, errb bytes.Buffer
	code, err := h.runCmd(ctx, remote.Command(bin, "image", "load", "--host="+hostLocal), pr, &outb, &errb)
	pr.CloseWithError(errLost) // a session that ended early leaves the writer nobody to write to
	c := <-done
	switch {
	case c.err != nil && !errors.Is(c.err, errLost):
		return c.red, wire.count(), fmt.Errorf("%w: %v", errCutHere, c.err)
	case err != nil:
		return c.red, wire.count(), fmt.Errorf("%w: %v", errLost, err)
	case code != 0:
		return c.red, wire.count(), errors.New(cmp.Or(firstLine(errb.String()), lastLine(outb.String()), fmt.Sprintf("the server's image load exited %d", code)))
	}
	return c.red, wire.count(), nil
}

// byteSize writes n as the engine's messages do: 1.2 MB.
func byteSize(n int64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%d B", n)
	case n < 1000*1000:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	case n < 1000*1000*1000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.2f GB", float64(n)/1e9)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

// newImageCmd is what the local handoff runs on a server to send it images; hidden, as
// only the same build of handoff on the other end speaks it.
func newImageCmd(c *common) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Hidden: true, Short: "Images sent by --host (run on the server by handoff)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "present",
		Short: "Print as JSON the image IDs, tags and layer chain IDs the engine holds",
		Args:  cobra.NoArgs,
		RunE: onEngine(func(ctx context.Context, rt *docker.Runtime) error {
			s, err := rt.Images(ctx)
			if err != nil {
				return err
			}
			return json.NewEncoder(c.io.Out).Encode(s)
		}),
	}, &cobra.Command{
		Use:   "load",
		Short: "Load a gzip'd docker-load tar from stdin into the engine",
		Args:  cobra.NoArgs,
		RunE: onEngine(func(ctx context.Context, rt *docker.Runtime) error {
			zr, err := gzip.NewReader(c.io.In)
			if err != nil {
				return fmt.Errorf("load image: read the stream: %w", err)
			}
			loaded, err := rt.LoadImage(ctx, zr)
			for _, l := range loaded {
				fmt.Fprintln(c.io.Out, l)
			}
			return err
		}),
	})
	return cmd
}

// onEngine runs f on the engine handoff reaches here, as a deploy here does.
func onEngine(f func(ctx context.Context, rt *docker.Runtime) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		rt, err := docker.New(cmd.Context())
		if err != nil {
			return err
		}
		defer rt.Close()
		return f(cmd.Context(), rt)
	}
}
