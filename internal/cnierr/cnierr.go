// Package cnierr is the one way warpnet's plugins report errors: the CNI
// error codes beyond the cni library's constants (so a number means the same
// from every plugin; README.md lists them), and constructors that name the
// offending configuration key and pick the code.
package cnierr

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

const (
	// PluginNotAvailable is the spec's code for STATUS when ADD cannot
	// succeed; the cni library has no constant for it.
	PluginNotAvailable uint = 50
	// AlreadyExists: ADD for a (container, ifname) that already has its
	// addresses or interface, i.e. a second ADD without a DEL in between.
	AlreadyExists uint = 101
	// CheckMismatch: CHECK found state that differs from prevResult.
	CheckMismatch uint = 102
)

// New is a CNI error with code and a formatted message.
func New(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

// Invalid is code 7 (invalid network configuration) for a value that parses
// but makes no sense; field is the key's path, e.g. "ipam.ranges[0][0].subnet".
func Invalid(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

// Decode unmarshals a JSON configuration into v. A key of the wrong type is
// code 6 naming the key; so is malformed JSON. A custom UnmarshalJSON
// method's error is passed on as code 6 as well: such types name their key
// in their own message (see FieldError).
func Decode(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	var fe *FieldError
	switch {
	case errors.As(err, &te):
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("%s: expected %s, got a JSON %s", te.Field, te.Type, te.Value), "")
	case errors.As(err, &se):
		return types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
	case errors.As(err, &fe):
		return types.NewError(types.ErrDecodingFailure, fe.Error(), "")
	default:
		return types.NewError(types.ErrDecodingFailure, "network configuration: "+err.Error(), "")
	}
}

// FieldError is what a custom UnmarshalJSON returns so that Decode can name
// the key (encoding/json does not add it for custom unmarshalers).
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Internal passes a *types.Error (anywhere in err's chain) on unchanged and
// turns anything else into code 999 (internal error); nil stays nil.
func Internal(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}
