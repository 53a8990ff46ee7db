// Package rollback is the one way warpnet undoes a half-done operation:
// every step that changed something pushes its undo, and a failure runs them
// in reverse order. A failing undo never hides the original error: both are
// reported, the undo's naming its step, so an operator knows what was left
// behind.
package rollback

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// Stack holds the undos of the steps done so far. The zero value is ready.
type Stack struct{ steps []step }

type step struct {
	what string
	undo func() error
}

// Push records how to undo a step that just succeeded; what names it in
// error messages ("delete veth warp1234").
func (s *Stack) Push(what string, undo func() error) {
	s.steps = append(s.steps, step{what, undo})
}

// Run undoes every recorded step, newest first, keeps going past failures
// and returns them all. The stack is empty afterwards.
func (s *Stack) Run() error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		if err := s.steps[i].undo(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.steps[i].what, err))
		}
	}
	s.steps = nil
	return errors.Join(errs...)
}

// OnError is deferred with a pointer to the operation's error result: if the
// operation failed, it rolls back and, if that failed too, adds the rollback
// failure to the error (a *types.Error keeps its code).
//
//	func Add(...) (err error) {
//		var undo rollback.Stack
//		defer undo.OnError(&err)
func (s *Stack) OnError(err *error) {
	if *err == nil {
		return
	}
	*err = With(*err, s.Run())
}

// With reports rerr, the failure of undoing what failed with err, beside
// err. A *types.Error keeps its code; nil rerr returns err unchanged.
func With(err, rerr error) error {
	if rerr == nil {
		return err
	}
	note := fmt.Sprintf(" (rollback failed, left behind: %v)", rerr)
	var te *types.Error
	if errors.As(err, &te) {
		return &types.Error{Code: te.Code, Msg: te.Msg + note, Details: te.Details}
	}
	return fmt.Errorf("%w%s", err, note)
}
