#!/bin/sh
# Copy the alert rules and the Grafana dashboards into the chart: Helm reads only files inside a
# chart (.Files.Get), and the PrometheusRule and dashboard ConfigMaps must carry exactly what
# dashboards/ ships. tests/deploy/test_deploy_files.py fails when a copy differs from its source.
# Run from anywhere: sh deploy/helm/sync-chart-files.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
files="$root/deploy/helm/driftd/files"
mkdir -p "$files/dashboards"
cp "$root/dashboards/prometheus/driftd-alerts.yml" "$files/driftd-alerts.yml"
rm -f "$files"/dashboards/*.json
cp "$root"/dashboards/grafana/dashboards/*.json "$files/dashboards/"
echo "chart files synced from dashboards/ into $files"
