"""Count the words of a text file with PySpark and print the top ones as one JSON line.

    spark-submit examples/spark/word_count.py examples/spark/words.txt [TOP]
"""

from __future__ import annotations

import json
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main(path: str, top: int) -> None:
    """Read ``path``, count each lower-cased word, print the ``top`` most frequent."""
    spark = SparkSession.builder.appName("dvt-word-count").getOrCreate()
    try:
        words = (spark.read.text(path)
                 .select(F.explode(F.split(F.lower(F.col("value")), r"[^a-z]+")).alias("word"))
                 .where(F.col("word") != ""))
        counts = words.groupBy("word").count().orderBy(F.desc("count"), F.asc("word"))
        rows = counts.limit(top).collect()
        print(json.dumps({"words": words.count(),
                          "top": [[row["word"], row["count"]] for row in rows]}))
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
