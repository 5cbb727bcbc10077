package cli

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/state"
)

func newCanaryCmd(c *common) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "canary status|promote|abort [service]",
		Short: "See a running canary (or watch) side by side with the old release, or decide it now: promote or abort",
		Long: `A deploy with strategy: canary (or --canary) sends the new release a share of
the requests step by step and compares both releases at every step. From
another shell:
  handoff canary status    the weights, the step and both releases' numbers
  handoff canary promote   end the canary now: every request to the new release
  handoff canary abort     end it now: every request back on the old release,
                           the new one removed (the deploy exits 9)
The running deploy takes a promote or abort within a second. They work on the
watch after a switch too (promote keeps the new release, abort switches back).`,
		Args:      cobra.RangeArgs(1, 2),
		ValidArgs: []string{"status", deploy.AskPromote, deploy.AskAbort},
		RunE: func(cmd *cobra.Command, args []string) error {
			return canaryRun(cmd.Context(), c, args[0], args[1:])
		},
	}
	return cmd
}

// canaryAskWait is how long promote and abort wait for the deploy to take them.
const canaryAskWait = 10 * time.Second

func canaryRun(ctx context.Context, c *common, what string, args []string) error {
	if what != "status" && what != deploy.AskPromote && what != deploy.AskAbort {
		return fmt.Errorf("%w: handoff canary %s: use status, promote or abort", errUsage, what)
	}
	s, err := c.settings(ctx, args)
	if err != nil {
		return err
	}
	dir := c.stateDir
	if dir == "" {
		dir = state.DefaultDir()
	}
	name := s.Service.Name
	steer := state.Steering{Dir: dir}
	st, err := steer.Status(name)
	if err != nil {
		return err
	}
	if st != nil && !current(st, time.Now()) {
		st = nil // left by a handoff that was killed: nothing runs it
	}
	if what == "status" {
		if c.json {
			return c.io.JSON(st)
		}
		if st == nil {
			fmt.Fprintf(c.io.Out, "no canary or watch of %s is running (`handoff status %s` says what serves)\n", name, name)
			return nil
		}
		printCanary(c, st)
		return nil
	}
	if st == nil {
		return fmt.Errorf("%w: no canary or watch of %s is running to %s", errUsage, name, what)
	}
	if err := steer.Ask(name, what); err != nil {
		return fmt.Errorf("ask the deploy to %s: %w", what, err)
	}
	deadline := time.Now().Add(canaryAskWait)
	for steer.Pending(name) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the deploy (pid %d) did not take the %s within %s; it is still asked, and taken at its next reading", st.PID, what, canaryAskWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	verb := map[string]string{deploy.AskPromote: "promotes " + st.New, deploy.AskAbort: "aborts " + st.New + ": every request goes back on " + st.Old}[what]
	fmt.Fprintf(c.io.Out, "the deploy (pid %d) %s\n", st.PID, verb)
	return nil
}

// current says whether a canary's published state is of a handoff that
// runs it now: its process lives and wrote the state within the last
// seconds (it does every second). Not the service's lock: any later
// deploy holds that, and taking it here would make one starting at that
// moment fail.
func current(st *deploy.CanaryStatus, now time.Time) bool {
	if now.Sub(st.Updated) > staleAfter || st.PID <= 0 {
		return false
	}
	err := syscall.Kill(st.PID, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// staleAfter is how old a canary's published state may be and still be
// taken for a live one.
const staleAfter = 10 * time.Second

func printCanary(c *common, st *deploy.CanaryStatus) {
	if st.Phase == deploy.PhaseWatch {
		fmt.Fprintf(c.io.Out, "watch of %s (every request) against %s before the switch, pid %d\n", st.New, st.Old, st.PID)
	} else {
		fmt.Fprintf(c.io.Out, "canary of %s, step %d of %d: %d%% of new requests (%s %d%%), pid %d\n", st.New, st.Step, st.Steps, st.Weight, st.Old, 100-st.Weight, st.PID)
	}
	left := time.Until(st.Ends).Round(time.Second)
	fmt.Fprintf(c.io.Out, "  %-12s %s, p50 %s\n", st.New, st.Release, st.Release.P50.Round(time.Millisecond))
	fmt.Fprintf(c.io.Out, "  %-12s %s, p50 %s\n", st.Old, st.Baseline, st.Baseline.P50.Round(time.Millisecond))
	if left > 0 {
		fmt.Fprintf(c.io.Out, "  %s: %s; judged in %s\n", st.Verdict, st.Reason, left)
	} else {
		fmt.Fprintf(c.io.Out, "  %s: %s\n", st.Verdict, st.Reason)
	}
}
