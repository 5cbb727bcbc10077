package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"
)

// Images lists what the engine holds: every image's ID and tags, and the chain ID of
// every layer prefix of every image (what a load finds there and does not read).
func (r *Runtime) Images(ctx context.Context) (ServerImages, error) {
	list, err := r.api.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		return ServerImages{}, fmt.Errorf("list images: %w", err)
	}
	v, err := r.api.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		return ServerImages{}, fmt.Errorf("read the engine's platform: %w", err)
	}
	out := ServerImages{Images: map[string][]string{}, Chains: []string{}, Platform: platform(v.Os, v.Arch)}
	seen := map[string]bool{}
	for _, s := range list.Items {
		img, err := r.api.ImageInspect(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed while we looked
		}
		if err != nil {
			return ServerImages{}, fmt.Errorf("inspect image %s: %w", shortID(s.ID), err)
		}
		out.Images[img.ID] = append([]string{}, img.RepoTags...)
		for _, c := range ChainIDs(img.RootFS.Layers) {
			if !seen[c] {
				seen[c] = true
				out.Chains = append(out.Chains, c)
			}
		}
	}
	return out, nil
}

// LocalImage is what sending an image needs to know of one on the local engine.
type LocalImage struct {
	ID       string
	DiffIDs  []string // its layers, bottom first
	Platform string   // os/arch, "linux/arm64"; "" when the engine does not say
	// RepoDigests are the registries' digests of it: none for an image built here and
	// never pushed or pulled.
	RepoDigests []string
}

// LocalImage inspects the local image ref.
func (r *Runtime) LocalImage(ctx context.Context, ref string) (LocalImage, error) {
	img, err := r.api.ImageInspect(ctx, ref)
	if err != nil {
		return LocalImage{}, err
	}
	return LocalImage{ID: img.ID, DiffIDs: img.RootFS.Layers, Platform: platform(img.Os, img.Architecture), RepoDigests: img.RepoDigests}, nil
}

// platform is os/arch, or "" when either is unknown.
func platform(os, arch string) string {
	if os == "" || arch == "" {
		return ""
	}
	return os + "/" + arch
}

// SaveImage writes `docker save ref` to w. A ref without a tag is saved as ref:latest:
// the engine saves every tag of a bare name, and a load would move them all.
func (r *Runtime) SaveImage(ctx context.Context, ref string, w io.Writer) error {
	rc, err := r.api.ImageSave(ctx, []string{TaggedName(ref)})
	if err != nil {
		return fmt.Errorf("save image %s: %w", ref, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("save image %s: %w", ref, err)
	}
	return nil
}

// TaggedName is ref with the tag the engine gives it when it has none (app → app:latest),
// written as the user would (not docker.io/library/app:latest); ref itself when it is
// not a reference.
func TaggedName(ref string) string {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref
	}
	return reference.FamiliarString(reference.TagNameOnly(n))
}

// LoadImage loads a `docker load` tar (plain or gzip-compressed) into the engine, and
// returns what the engine said it loaded ("Loaded image: app:v2"). An error anywhere in
// the engine's answer fails the load, also one written as a line of its stream (the
// containerd image store answers 200 and "Error unpacking image ...").
func (r *Runtime) LoadImage(ctx context.Context, tar io.Reader) ([]string, error) {
	rc, err := r.api.ImageLoad(ctx, tar, client.ImageLoadWithQuiet(true))
	if err != nil {
		return nil, fmt.Errorf("load image: %w", err)
	}
	defer rc.Close()
	return readLoadAnswer(rc)
}

// loadMessage is one message of the engine's answer to a load: jsonstream.Message and
// the old "error" field some engines still write beside errorDetail.
type loadMessage struct {
	jsonstream.Message
	ErrorText string `json:"error,omitempty"`
}

func readLoadAnswer(r io.Reader) ([]string, error) {
	var loaded []string
	dec := json.NewDecoder(r)
	for {
		var m loadMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return loaded, fmt.Errorf("load image: read the engine's answer: %w", err)
		}
		if m.Error != nil && m.Error.Message != "" {
			return loaded, fmt.Errorf("load image: %s", m.Error.Message)
		}
		if m.ErrorText != "" {
			return loaded, fmt.Errorf("load image: %s", m.ErrorText)
		}
		for _, line := range strings.Split(m.Stream, "\n") {
			line = strings.TrimSpace(line)
			switch {
			case line == "":
			case strings.HasPrefix(strings.ToLower(line), "error"):
				return loaded, fmt.Errorf("load image: %s", line)
			default:
				loaded = append(loaded, line)
			}
		}
	}
	return loaded, nil
}
