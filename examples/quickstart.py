"""The quick start: a three-node DAG and a stateful class node, run locally with storage.

    python examples/quickstart.py
"""

from __future__ import annotations

import tempfile

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory


@workflow
def sum(a, b):  # noqa: A001 - the name the quick start uses
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


def main() -> None:
    a, b = 1, 1
    a_plus_b = sum(a, b).set_name("node1")
    a_plus_two_b = sum(a_plus_b, b).set_name("node2")
    result_of_mult = multiply(a_plus_b, a_plus_two_b).set_name("node3")

    with tempfile.TemporaryDirectory() as folder:
        storage = storage_factory({"kind": "file", "options": {"path": folder}})
        local_workflow = LocalWorkflow(result_of_mult, workflow_name="operations")
        local_workflow.set_storage(storage)
        print("node3 =", local_workflow.run())
        print("stored:", storage.list_tasks(workflow_name="operations", pattern="*"))
        print("node2 =", storage.read_task(workflow_name="operations", task_name="node2"))

    one = minus(4, 3).set_name("four_minus_three")
    incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
    two = minus(3, one).set_name("three_minus_one")
    incremental_sum.add(two).set_name("one_plus_two")
    incremental_sum.add(two).set_name("three_plus_two")
    six = incremental_sum.add(one).set_name("five_plus_one")
    result = minus(six, 2).set_name("six_minus_two")
    print("six_minus_two =", LocalWorkflow(result, workflow_name="stateful").run())


if __name__ == "__main__":
    main()
