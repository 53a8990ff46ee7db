#!/usr/bin/env bash
# Builds the real kube-apiserver that the e2e tests run (tests/apiserver) into
# the cache, unless it is there: hack/build-kube.sh kube-apiserver (see there;
# WARP_APISERVER_BIN overrides where the binary goes).
exec "$(dirname "${BASH_SOURCE[0]}")/build-kube.sh" kube-apiserver
