package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/internal/hostcmd"
)

// PullPolicy says when a service's image is fetched from its registry.
type PullPolicy string

// The pull policies.
const (
	PullMissing PullPolicy = "missing" // only when it is not on the host (the default)
	PullAlways  PullPolicy = "always"  // every deploy: a tag that moves (latest, main)
	PullNever   PullPolicy = "never"   // never: the image must be on the host
)

// Job is the release job: a command run once per deploy in a one-off
// container of the new image, before the new release starts (database
// migrations). A non-zero exit or its timeout aborts the deploy.
type Job struct {
	Command []string
	Timeout time.Duration
	// Pause holds the service's new requests while the job runs (handoff
	// proxy only, each request at most Timeout or the proxy's pause limit),
	// for a migration the old code must not see half done.
	Pause bool
}

// Hooks are shell commands run on the host with the deploy's facts in
// their environment (HANDOFF_SERVICE, HANDOFF_RELEASE, ...).
type Hooks struct {
	PreDeploy  string // before the release job and the new release; failing aborts
	PostDeploy string // after a deploy succeeded
	OnFailure  string // after a deploy failed or was interrupted
	Dir        string // where they run ("" : the current directory)
	Timeout    time.Duration
}

// Defaults of the release work.
const (
	DefaultReleaseTimeout = 10 * time.Minute
	DefaultHookTimeout    = 2 * time.Minute
)

// image builds the image when the service says so, or pulls it as its
// pull policy says, then resolves it to an ID and records its digest.
// Nothing users see changes here, whatever happens.
func (d *Deployer) image(ctx context.Context, svc Service, rec *Record) (string, error) {
	id, err := d.fetch(ctx, svc)
	if err != nil {
		return "", err
	}
	rec.Digest, err = d.Runtime.Digest(ctx, id, svc.Image)
	if err != nil {
		d.note(rec, fmt.Sprintf("could not read the digest of %s: %v", svc.Image, err))
	}
	return id, nil
}

func (d *Deployer) fetch(ctx context.Context, svc Service) (string, error) {
	if svc.Build != nil {
		if err := d.Runtime.Build(ctx, *svc.Build, svc.Image, d.Report.Output()); err != nil {
			return "", err
		}
		return d.Runtime.ImageID(ctx, svc.Image)
	}
	switch svc.Pull {
	case PullNever:
		return d.Runtime.ImageID(ctx, svc.Image)
	case PullAlways:
		if err := d.Runtime.Pull(ctx, svc.Image, d.Report.Output()); err != nil {
			return "", err
		}
	default:
		id, err := d.Runtime.ImageID(ctx, svc.Image)
		if !errors.Is(err, ErrImageNotFound) {
			return id, err
		}
		if err := d.Runtime.Pull(ctx, svc.Image, d.Report.Output()); err != nil {
			return "", fmt.Errorf("%q is not on this Docker host, and %w", svc.Image, err)
		}
	}
	return d.Runtime.ImageID(ctx, svc.Image)
}

func (d *Deployer) imageDetail(svc Service) string {
	switch {
	case svc.Build != nil:
		return svc.Image + " (build)"
	case svc.Pull == PullAlways:
		return svc.Image + " (pull: always)"
	}
	return svc.Image
}

// releaseWork runs what a deploy does before its new release starts: the
// pre_deploy hook, then the release job. Either failing aborts the deploy
// with the old release serving, untouched. live is the upstream the
// service is served by now ("" : none yet).
func (d *Deployer) releaseWork(ctx context.Context, r *run, imageID string) error {
	svc, rec := r.svc, r.rec
	if svc.Hooks.PreDeploy != "" {
		err := d.phase(r, PhaseHook, svc.Hooks.PreDeploy, func() error {
			return d.hook(ctx, svc, rec, "pre_deploy", svc.Hooks.PreDeploy)
		})
		if err != nil {
			return err
		}
	}
	if svc.Release == nil {
		return nil
	}
	return d.phase(r, PhaseRelease, strings.Join(svc.Release.Command, " "), func() error {
		return d.releaseJob(ctx, r, imageID)
	})
}

// releaseJob runs the service's release job in a one-off container of
// imageID. With release_pause, new requests are held first, and the job
// waits until those the old release still runs have finished.
func (d *Deployer) releaseJob(ctx context.Context, r *run, imageID string) error {
	svc, rec := r.svc, r.rec
	job := svc.Release
	if job.Pause {
		if d.Pauser == nil {
			return fmt.Errorf("%w: release_pause holds requests only with `proxy: handoff`; %s cannot hold them: remove release_pause or put handoff proxy in front", ErrConfig, d.describe())
		}
		// Recorded first: a handoff killed while they are held leaves a
		// record that says so, and the next deploy or repair lets them go.
		r.held = true
		if err := d.save(r); err != nil {
			return fmt.Errorf("record that requests are held, before holding them: %w (nothing was changed)", err)
		}
		// A request is held through the wait for those in flight and the
		// job, each at most the release timeout.
		if err := d.Pauser.Pause(ctx, 2*job.Timeout); err != nil {
			// The pause may have been made and its answer lost: resuming is
			// harmless either way, and nothing may stay held for a job
			// that never ran.
			d.resume(ctx, r)
			return fmt.Errorf("%w: hold the requests of %s before the release job: %v", ErrReleaseJob, svc.Name, err)
		}
		d.note(rec, "requests held while the release job runs")
		defer d.resume(ctx, r)
		if err := d.waitIdle(ctx, r, job.Timeout); err != nil {
			return err
		}
	}
	jctx, cancel := context.WithTimeout(ctx, job.Timeout)
	defer cancel()
	code, err := d.Runtime.Job(jctx, svc, imageID, job.Command, d.Report.Output())
	switch {
	case err != nil && ctx.Err() == nil && jctx.Err() != nil:
		return fmt.Errorf("%w: %q did not finish within %s (release_timeout): %v; nothing else changed", ErrReleaseJob, strings.Join(job.Command, " "), job.Timeout, err)
	case err != nil && ctx.Err() != nil:
		// Interrupted (Ctrl-C, SIGTERM, SIGHUP): it ends as an interrupted run does.
		return fmt.Errorf("%w: %q was stopped, interrupted: %w; nothing else changed", ErrReleaseJob, strings.Join(job.Command, " "), ctx.Err())
	case errors.Is(err, ErrConfig):
		// Refused before it ran (a setting this engine cannot apply):
		// a configuration error, not a job that failed.
		return fmt.Errorf("release job %q not started: %w; nothing changed", strings.Join(job.Command, " "), err)
	case err != nil:
		return fmt.Errorf("%w: %v", ErrReleaseJob, err)
	}
	r.exitCode = &code
	if code != 0 {
		return fmt.Errorf("%w: %q exited with %d (its output is above); the new release was not started", ErrReleaseJob, strings.Join(job.Command, " "), code)
	}
	return nil
}

// waitIdle waits, once new requests are held, until none of the service's
// is in flight on the upstream it is served by now ("" : none yet), for at
// most timeout, shown as the drain is.
// When time is up the job does not run: a migration under old code still
// serving is what release_pause exists to prevent; the deploy fails with
// the old release serving, and the held requests are let go.
func (d *Deployer) waitIdle(ctx context.Context, r *run, timeout time.Duration) error {
	rec, endpoints := r.rec, r.view.endpoints()
	if len(endpoints) == 0 || d.Proxy == nil {
		return nil // nothing serves yet
	}
	start := d.now()
	deadline := start.Add(timeout)
	noted, waited := "", false
	for {
		in, err := d.inFlight(ctx, endpoints)
		if err != nil && ctx.Err() != nil {
			return ctx.Err() // interrupted (Ctrl-C, SIGTERM, SIGHUP): ends as interrupted, exit 130
		}
		if err != nil {
			return fmt.Errorf("%w: before the release job, %w; the release job did not run", ErrProxy, err)
		}
		if in.Note != "" && in.Note != noted {
			d.note(rec, "release: "+in.Note)
			noted = in.Note
		}
		if !in.Reported || in.Requests == 0 {
			if waited {
				d.note(rec, fmt.Sprintf("waited %s for the requests in flight on %s to finish before the release job", d.now().Sub(start).Round(time.Millisecond), endpointList(endpoints)))
			}
			return nil
		}
		if !d.now().Before(deadline) {
			on := endpointList(in.where)
			if r.view.live != nil {
				on += " (" + r.view.live.Name + ")"
			}
			return fmt.Errorf("%w: %d request(s) still in flight on %s after %s (release_timeout): the release job did not run beside them; the held requests are let go; let those requests end (long uploads, streams, WebSockets), or raise release_timeout",
				ErrReleaseJob, in.Requests, on, timeout)
		}
		d.Report.Progress(PhaseRelease, fmt.Sprintf("%d request(s) still in flight on %s", in.Requests, endpointList(in.where)), fmt.Sprintf("up to %s", timeout))
		waited = true
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.after(min(drainPoll, deadline.Sub(d.now()))):
		}
	}
}

// resume lets the requests a release job held go on.
func (d *Deployer) resume(ctx context.Context, r *run) {
	svc, rec := r.svc, r.rec
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := d.Pauser.Resume(rctx); err != nil {
		d.note(rec, fmt.Sprintf("could not let the held requests of %s go on: %v; run `handoff proxy resume %s`", svc.Name, err, svc.Name))
		return
	}
	r.held = false
}

// afterHooks runs post_deploy or on_failure once a deploy has ended, and
// records how they went. They never change the deploy's outcome.
func (d *Deployer) afterHooks(ctx context.Context, r *run) {
	svc, rec := r.svc, r.rec
	name, cmd := "post_deploy", svc.Hooks.PostDeploy
	if rec.Outcome != OutcomeSucceeded {
		name, cmd = "on_failure", svc.Hooks.OnFailure
	}
	if cmd == "" {
		return
	}
	if err := d.hook(context.WithoutCancel(ctx), svc, rec, name, cmd); err != nil {
		d.note(rec, err.Error())
	} else {
		d.note(rec, name+" hook ran")
	}
	if err := d.save(r); err != nil {
		d.Report.Note(fmt.Sprintf("could not save the history: %v", err))
	}
}

// hook runs cmd with sh -c on the host, its output with the deploy's, in
// a process group of its own that its timeout ends whole.
func (d *Deployer) hook(ctx context.Context, svc Service, rec *Record, name, cmd string) error {
	ctx, cancel := context.WithTimeout(ctx, svc.Hooks.Timeout)
	defer cancel()
	c := hostcmd.CommandContext(ctx, "sh", "-c", cmd)
	c.Dir = svc.Hooks.Dir
	c.Env = append(os.Environ(), HookEnv(svc, rec, name)...)
	c.Stdout, c.Stderr = d.Report.Output(), d.Report.Output()
	err := c.Run()
	switch {
	case err == nil:
		return nil
	case ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%w: %s hook did not finish within %s: %s", ErrHook, name, svc.Hooks.Timeout, cmd)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("%w: %s hook exited with %d: %s", ErrHook, name, exit.ExitCode(), cmd)
	}
	return fmt.Errorf("%w: %s hook: %v", ErrHook, name, err)
}

// HookEnv is the deploy's facts as a hook sees them.
func HookEnv(svc Service, rec *Record, hook string) []string {
	return []string{
		"HANDOFF_HOOK=" + hook,
		"HANDOFF_SERVICE=" + svc.Name,
		"HANDOFF_DEPLOY_ID=" + rec.ID,
		"HANDOFF_RELEASE=" + strconv.Itoa(rec.ToRelease),
		"HANDOFF_CONTAINER=" + rec.To,
		"HANDOFF_PREVIOUS_RELEASE=" + strconv.Itoa(rec.FromRelease),
		"HANDOFF_PREVIOUS_CONTAINER=" + rec.From,
		"HANDOFF_IMAGE=" + rec.Image,
		"HANDOFF_IMAGE_ID=" + rec.ImageID,
		"HANDOFF_DIGEST=" + rec.Digest,
		"HANDOFF_OUTCOME=" + rec.Outcome,
		"HANDOFF_PHASE=" + rec.Phase,
		"HANDOFF_ERROR=" + rec.Error,
	}
}
