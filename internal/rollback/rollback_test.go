package rollback

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestOnError(t *testing.T) {
	var order []string
	op := func(fail bool) (err error) {
		var undo Stack
		defer undo.OnError(&err)
		undo.Push("first", func() error { order = append(order, "first"); return nil })
		undo.Push("second", func() error { order = append(order, "second"); return errors.New("busy") })
		if fail {
			return types.NewError(types.ErrInternal, "boom", "")
		}
		return nil
	}
	if err := op(false); err != nil || len(order) != 0 {
		t.Fatalf("success rolled back: %v %v", err, order)
	}
	err := op(true)
	if strings.Join(order, ",") != "second,first" {
		t.Errorf("undo order %v", order)
	}
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInternal || !strings.Contains(te.Msg, "boom") ||
		!strings.Contains(te.Msg, "second: busy") {
		t.Errorf("err = %v", err)
	}
}

func TestWith(t *testing.T) {
	base := errors.New("base")
	if With(base, nil) != base {
		t.Error("nil rollback error changed err")
	}
	if err := With(base, errors.New("x")); !errors.Is(err, base) || !strings.Contains(err.Error(), "rollback failed") {
		t.Errorf("With = %v", err)
	}
}
