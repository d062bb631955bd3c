"""The quick-start DAG and a stateful class node as a Kubeflow Pipelines pipeline.

From a laptop with Docker: build the step image (this folder + the DAG), push it, and
submit the pipeline to a KFP API::

    export FUNCTIONFUSE_REGISTRY_USERNAME=me FUNCTIONFUSE_REGISTRY_PASSWORD=...
    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the laptop's S3 credentials
    python examples/kfp_pipeline.py \\
        --registry registry.example.com/team --kfp-host http://localhost:3000 \\
        --storage-s3 bucket/functionfuse --s3-endpoint http://localhost:9000 \\
        --s3-step-endpoint http://minio.kubeflow.svc:9000 --s3-secret functionfuse-s3

The laptop and the steps see the same S3 store at two addresses: ``--s3-endpoint`` is
the laptop's (e.g. a ``kubectl port-forward``), used to plan the run and to read the
results with ``--wait``; ``--s3-step-endpoint`` is the one inside the cluster (default:
the same), and the steps take their credentials from the Kubernetes secret
``--s3-secret`` (keys ``accessKey`` and ``secretKey``). On a cluster with the
functionfuse-kfp chart, ``--cluster-settings kubeflow`` takes the steps' storage, its
secret, the service account, the image pull secret and the pipeline root from the
chart's settings ConfigMap instead (read with kubectl; or give a file holding it).

Or run every step in a local container with kfp.local.DockerRunner (no cluster)::

    python examples/kfp_pipeline.py --local --storage ./storage

Run it twice with ``--storage``: the second run loads the stored result instead of
starting the steps again. ``--compile pipeline.yaml`` only writes the pipeline file
(offline, no Docker); ``--plan`` only shows what a run would do (it reads storage). The registry user is ``--username`` or
``$FUNCTIONFUSE_REGISTRY_USERNAME``; the password is read from
``$FUNCTIONFUSE_REGISTRY_PASSWORD`` (or asked for), never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys

from functionfuse import workflow


@workflow
def sum(a, b):
    return a + b


@workflow
def multiply(a, b):
    return a * b


@workflow
class IncrementalSum:
    def __init__(self, start):
        self.start = start

    def add(self, n):
        self.start += n
        return self.start


@workflow
def minus(a, b):
    return a - b


def build_dag():
    """The seed's quick-start DAG (node3 = 6) and its stateful example (six_minus_two = 4)."""
    a_plus_b = sum(1, 1).set_name("node1")
    a_plus_two_b = sum(a_plus_b, 1).set_name("node2")
    node3 = multiply(a_plus_b, a_plus_two_b).set_name("node3")

    one = minus(4, 3).set_name("four_minus_three")
    incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
    two = minus(3, one).set_name("three_minus_one")
    incremental_sum.add(two).set_name("one_plus_two")
    incremental_sum.add(two).set_name("three_plus_two")
    six = incremental_sum.add(one).set_name("five_plus_one")
    result = minus(six, 2).set_name("six_minus_two")
    return node3, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="run the steps in local containers (kfp.local)")
    parser.add_argument("--compile", metavar="YAML", help="only write the pipeline file")
    parser.add_argument("--plan", action="store_true", help="only show what a run would do, from what storage holds")
    parser.add_argument("--base-image", default="python:3.11-slim", help="image the step image is built on")
    parser.add_argument("--wheelhouse", help="install Python packages from this wheel folder (no index needed)")
    parser.add_argument("--registry", help="registry[:port][/namespace] to push the step image to")
    parser.add_argument("--username", default=os.environ.get("FUNCTIONFUSE_REGISTRY_USERNAME"),
                        help="registry user (default: $FUNCTIONFUSE_REGISTRY_USERNAME; password: "
                        "$FUNCTIONFUSE_REGISTRY_PASSWORD, or asked)")
    parser.add_argument("--kfp-host", default="http://localhost:3000", help="the KFP API address")
    parser.add_argument("--storage", help="file storage folder (local runs)")
    parser.add_argument("--storage-s3", metavar="BUCKET/PREFIX", help="S3 storage (cluster runs)")
    parser.add_argument("--s3-endpoint", help="S3 endpoint as this machine sees it (planning, --wait)")
    parser.add_argument("--s3-step-endpoint", help="S3 endpoint as the steps see it (default: --s3-endpoint)")
    parser.add_argument("--s3-secret", default=None, help="Kubernetes secret with accessKey/secretKey for the steps")
    parser.add_argument("--cluster-settings", metavar="NAMESPACE|FILE",
                        help="the functionfuse-kfp chart's settings (read with kubectl, or from a file)")
    parser.add_argument("--wait", action="store_true", help="wait for the KFP run and print the results")
    parser.add_argument("--workflow-name", default="kfp-example")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.storage import storage_factory

    wf = KFPWorkflow(*build_dag(), workflow_name=args.workflow_name, baseimage=args.base_image, kfp_host=args.kfp_host)
    # the image holds this folder (the code); stored results of the other examples stay out
    wf.set_project(os.path.dirname(os.path.abspath(__file__)), exclude=["storage/", "*.ffr"])
    if args.wheelhouse:
        wf.set_wheelhouse(args.wheelhouse)
    if args.cluster_settings:  # first: the options below override what it sets
        wf.set_cluster_settings(args.cluster_settings)
    if args.storage:
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": os.path.abspath(args.storage)}}))
    if args.storage_s3:
        def s3_storage(endpoint: str | None) -> object:
            s3 = {"endpoint_url": endpoint} if endpoint else {}
            return storage_factory({"kind": "S3", "options": {"path": args.storage_s3, "s3fs": s3}})

        wf.set_storage(s3_storage(args.s3_endpoint))  # the laptop's view: plans the run, reads the results
        if args.s3_step_endpoint and args.s3_step_endpoint != args.s3_endpoint:
            wf.set_step_storage(s3_storage(args.s3_step_endpoint))  # the steps' view, inside the cluster
    if args.s3_secret:
        wf.set_storage_secret(args.s3_secret)
    wf.query("^node3$").set_task_args({"cpu_limit": "1", "memory_limit": "512Mi", "retries": 1})

    if args.plan:
        print(wf.plan())
        return 0
    if args.compile:
        print(wf.compile(args.compile))
        return 0
    if args.local:
        node3, result = wf.run_local()
        print(json.dumps({"node3": node3, "six_minus_two": result}))
        return 0
    if not args.registry:
        parser.error("--registry is needed to push the step image (or use --local / --compile)")
    credentials = {"server": args.registry}
    if args.username:
        password = os.environ.get("FUNCTIONFUSE_REGISTRY_PASSWORD") or getpass.getpass(f"Password of {args.username}: ")
        credentials.update(username=args.username, password=password)
    wf.set_registry_credentials(credentials)
    outcome = wf.run(wait=args.wait)
    if args.wait:
        node3, result = outcome
        print(json.dumps({"node3": node3, "six_minus_two": result}))
    else:
        print(json.dumps({"run_id": outcome.run_id, "url": outcome.url, "image": outcome.image}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
