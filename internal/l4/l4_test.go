package l4

import "testing"

func TestNames(t *testing.T) {
	for in, want := range map[string]Protocol{"TCP": TCP, "": TCP, "udp": UDP} {
		if p, ok := Parse(in); !ok || p != want || (in != "" && p.String() != map[Protocol]string{TCP: "tcp", UDP: "udp"}[p]) {
			t.Errorf("Parse(%q) = %v, %v", in, p, ok)
		}
	}
	if _, ok := Parse("SCTP"); ok {
		t.Error("SCTP parsed")
	}
	if Protocol(132).String() != "proto132" {
		t.Error(Protocol(132).String())
	}
}
