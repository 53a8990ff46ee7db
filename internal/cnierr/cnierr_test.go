package cnierr

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

type custom struct{}

func (c *custom) UnmarshalJSON([]byte) error {
	return &FieldError{Field: "xdp", Msg: "expected true or false"}
}

func TestDecode(t *testing.T) {
	var v struct {
		MTU  int    `json:"mtu"`
		XDP  custom `json:"xdp"`
		Name string `json:"name"`
	}
	for in, want := range map[string]string{
		`{"mtu": "abc"}`: "mtu: expected int, got a JSON string",
		`{"mtu": 1`:      "not valid JSON",
		`{"xdp": 1}`:     "xdp: expected true or false",
	} {
		err := Decode([]byte(in), &v)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrDecodingFailure || !strings.Contains(te.Msg, want) {
			t.Errorf("Decode(%s) = %v, want code 6 containing %q", in, err, want)
		}
	}
	if err := Decode([]byte(`{"mtu": 9000}`), &v); err != nil || v.MTU != 9000 {
		t.Errorf("valid: %v, %+v", err, v)
	}
}

func TestInternal(t *testing.T) {
	te := Invalid("mtu", "%d is out of range", 5)
	if te.Code != types.ErrInvalidNetworkConfig || te.Msg != "mtu: 5 is out of range" {
		t.Errorf("Invalid = %+v", te)
	}
	if got := Internal(json.Unmarshal([]byte("x"), new(int))); got.(*types.Error).Code != types.ErrInternal {
		t.Errorf("Internal(plain) = %v", got)
	}
	if got := Internal(errors.Join(errors.New("x"), te)); got != te {
		t.Errorf("Internal kept %v, want %v", got, te)
	}
	if Internal(nil) != nil {
		t.Error("Internal(nil) != nil")
	}
}
