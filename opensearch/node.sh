#!/usr/bin/env bash
# A local single-node OpenSearch 2.19 with the k-NN plugin (see pom.xml and README).
#   opensearch/node.sh build              resolve the artifacts (~/.m2) and compile, if stale
#   opensearch/node.sh run HOME [PORT]    build if needed, then run the node in the foreground;
#                                         HOME keeps its data; PORT: a port or a range
#                                         (default 9200-9300), 0 for any free port
# Needs Java 17+ and Maven. OPENSEARCH_JAVA_OPTS replaces the default heap (-Xms512m -Xmx1g).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "${1:-}" = run ] && [ $# -ge 2 ]; then
    home="$(mkdir -p "$2" && cd "$2" && pwd)" # before the cd below: HOME may be relative
fi
cd "$here"

stale() {
    [ ! -f target/classpath.txt ] || [ pom.xml -nt target/classpath.txt ] ||
        [ ! -f target/classes/imageindex/opensearch/LocalNode.class ] ||
        [ src/main/java/imageindex/opensearch/LocalNode.java -nt \
            target/classes/imageindex/opensearch/LocalNode.class ]
}

build() {
    if stale; then
        mvn -q -B compile
        touch target/classpath.txt
    fi
}

case "${1:-}" in
build)
    build
    ;;
run)
    [ $# -ge 2 ] || { echo "usage: $0 run HOME [PORT]" >&2; exit 2; }
    build
    cp="target/classes:$(cat target/classpath.txt):target/knn/*"
    # exec: the JVM gets SIGTERM directly and closes the node cleanly.
    # shellcheck disable=SC2086
    exec java ${OPENSEARCH_JAVA_OPTS:--Xms512m -Xmx1g} -Djava.awt.headless=true \
        -cp "$cp" imageindex.opensearch.LocalNode "$home" "${3:-9200-9300}"
    ;;
*)
    echo "usage: $0 build | run HOME [PORT]" >&2
    exit 2
    ;;
esac
