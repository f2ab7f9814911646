"""The diamond-shaped pipeline of examples/diamond.yaml, written with the Python builder.

Register it like a JSON or YAML file: `dagnats workflow register examples/pipeline.py`.
"""

from dagnats.api.builder import Workflow, input_ref

pipeline = Workflow("pipeline", description="split a sentence, count and shout its words, report")
split = pipeline.task(
    "split",
    "shell",
    input=input_ref("sentence"),
    config={"command": "echo '" + input_ref("sentence") + "' | wc -w | tr -d ' \\n'"},
)
shout = pipeline.task(
    "shout", "shell", config={"command": "echo '" + input_ref("sentence") + "' | tr a-z A-Z"}
)
report = pipeline.task(
    "report",
    "echo",
    depends_on=[split, shout],
    input={"words": split.output("stdout"), "loud": shout.output("stdout")},
    retry={"max_attempts": 3, "backoff": "exponential", "initial": "1s"},
)
