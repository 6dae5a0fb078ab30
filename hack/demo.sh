#!/usr/bin/env bash
echo "demo: not yet — the local end-to-end demo lands with the cluster issue"
