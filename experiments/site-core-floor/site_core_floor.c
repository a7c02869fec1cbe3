/* What a compiled site core would cost per frame, measured, not a product part: a libnats subscription to a
 * channel's signed frames, the frame's structure and Ed25519 checks (libsodium), a replay check, Opus decode
 * (libopus) into a ring, and a sink thread that wakes once per block on absolute-time sleeps, resamples by
 * linear interpolation (the rate a control loop would set) and takes the block's peak level. No sound card:
 * the block is computed and dropped, as the bench's timed sink does. Prints its own CPU over a window.
 * Two shapes: `libnats` (its reader and delivery threads, and a sink thread) and `one-thread` (a plaintext NATS
 * connection of its own, read with ppoll() until the next block is due: one wake-up per message or block). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <nats/nats.h>
#include <opus/opus.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define RATE 48000
#define RING (RATE * 4)
#define MAX_PCM 5760

static float ring[RING];
static uint64_t wpos, rpos_int;
static double rpos_frac;
static volatile int started;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char pk[32], kid[8];
static OpusDecoder *dec;
static volatile uint64_t msgs, frames, bad, replayed, underruns, blocks;
static uint64_t next_seq;
static int have_seq, block = 2400;
static double ratio = 1.00002;
static volatile float last_peak;

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static void handle_frame(const unsigned char *d, int n) {
    msgs++;
    if (n < 107 || n > 5236 || d[0] != 'C' || d[1] != 'C' || d[2] != 1) { bad++; goto out; }
    int count = d[3] & 0x7f;
    size_t off = 40 + ((d[3] & 0x80) ? 24 : 0);
    if (count < 1 || count > 4 || memcmp(d + 32, kid, 8) != 0) { bad++; goto out; }
    if (crypto_sign_verify_detached(d + n - 64, d, (unsigned long long)(n - 64), pk) != 0) { bad++; goto out; }
    uint64_t seq = be64(d + 12);
    if (have_seq && seq < next_seq) { replayed++; goto out; }
    next_seq = seq + (uint64_t)count;
    have_seq = 1;
    float pcm[MAX_PCM];
    for (int i = 0; i < count; i++) {
        if (off + 2 > (size_t)(n - 64)) { bad++; break; }
        int len = (d[off] << 8) | d[off + 1];
        off += 2;
        if (len < 1 || off + (size_t)len > (size_t)(n - 64)) { bad++; break; }
        int got = opus_decode_float(dec, d + off, len, pcm, MAX_PCM, 0);
        off += (size_t)len;
        if (got < 0) { bad++; continue; }
        pthread_mutex_lock(&mu);
        for (int k = 0; k < got; k++) ring[(wpos + (uint64_t)k) % RING] = pcm[k];
        wpos += (uint64_t)got;
        frames++;
        pthread_mutex_unlock(&mu);
    }
out:
    return;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure) {
    (void)nc; (void)sub; (void)closure;
    handle_frame((const unsigned char *)natsMsg_GetData(m), natsMsg_GetDataLength(m));
    natsMsg_Destroy(m);
}

static void play_block(void) {
    static float out[RATE / 10];
    {
        pthread_mutex_lock(&mu);
        if (!started && wpos >= RATE / 5) { started = 1; rpos_int = wpos - RATE / 5; }
        uint64_t need = (uint64_t)((double)block * ratio) + 2;
        int ok = started && wpos - rpos_int >= need;
        if (ok) {
            double pos = rpos_frac;
            for (int k = 0; k < block; k++) {
                uint64_t i = rpos_int + (uint64_t)pos;
                double f = pos - floor(pos);
                float a = ring[i % RING], b = ring[(i + 1) % RING];
                out[k] = a + (float)f * (b - a);
                pos += ratio;
            }
            rpos_int += (uint64_t)pos;
            rpos_frac = pos - floor(pos);
        } else if (started) {
            underruns++;
        }
        pthread_mutex_unlock(&mu);
        if (!ok) memset(out, 0, sizeof(float) * (size_t)block);
        float peak = 0;
        for (int k = 0; k < block; k++) peak = fmaxf(peak, fabsf(out[k]));
        last_peak = peak;
        blocks++;
    }
}

static void advance(struct timespec *t, long ns) {
    t->tv_nsec += ns;
    while (t->tv_nsec >= 1000000000L) { t->tv_nsec -= 1000000000L; t->tv_sec++; }
}

static void *sink(void *arg) {
    (void)arg;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    long step = (long)((double)block * 1e9 / RATE);
    for (;;) {
        advance(&t, step);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        play_block();
    }
    return NULL;
}

/* One thread for everything: our own plaintext NATS connection read with ppoll() until the next block is due, so
 * the process wakes for a message or for a block and for nothing else. */
static int send_all(int fd, const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t w = send(fd, s, n, 0);
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *one_thread(void *arg) {
    const char **a = (const char **)arg; /* url, subject */
    const char *hp = strstr(a[0], "://") ? strstr(a[0], "://") + 3 : a[0];
    char host[256];
    snprintf(host, sizeof host, "%s", hp);
    char *colon = strrchr(host, ':');
    if (!colon) { fprintf(stderr, "bad url\n"); exit(2); }
    *colon = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { fprintf(stderr, "connect failed\n"); exit(1); }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB %s 1\r\nPING\r\n", a[1]);
    if (send_all(fd, cmd) != 0) exit(1);
    static unsigned char buf[1 << 20];
    size_t have = 0;
    struct timespec due, now;
    clock_gettime(CLOCK_MONOTONIC, &due);
    long step = (long)((double)block * 1e9 / RATE);
    advance(&due, step);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long wait_ns = (due.tv_sec - now.tv_sec) * 1000000000L + (due.tv_nsec - now.tv_nsec);
        if (wait_ns <= 0) {
            play_block();
            advance(&due, step);
            continue;
        }
        struct timespec to = {wait_ns / 1000000000L, wait_ns % 1000000000L};
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = ppoll(&p, 1, &to, NULL);
        if (r <= 0) continue;
        ssize_t got = recv(fd, buf + have, sizeof buf - have, 0);
        if (got <= 0) { fprintf(stderr, "connection closed\n"); exit(1); }
        have += (size_t)got;
        size_t pos = 0;
        for (;;) {
            unsigned char *eol = memmem(buf + pos, have - pos, "\r\n", 2);
            if (!eol) break;
            size_t line = (size_t)(eol - (buf + pos));
            if (line >= 4 && memcmp(buf + pos, "MSG ", 4) == 0) {
                /* MSG <subject> <sid> [reply-to] <#bytes> */
                size_t i = line;
                while (i > 0 && buf[pos + i - 1] != ' ') i--;
                size_t len = (size_t)strtoul((const char *)buf + pos + i, NULL, 10);
                size_t start = pos + line + 2;
                if (have < start + len + 2) break; /* the payload is not all here yet */
                handle_frame(buf + start, (int)len);
                pos = start + len + 2;
                continue;
            }
            if (line == 4 && memcmp(buf + pos, "PING", 4) == 0 && send_all(fd, "PONG\r\n") != 0) exit(1);
            if (line >= 4 && memcmp(buf + pos, "-ERR", 4) == 0) {
                fprintf(stderr, "%.*s\n", (int)line, buf + pos);
                exit(1);
            }
            pos += line + 2;
        }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    return NULL;
}

static double cpu_s(struct rusage *r) {
    return (double)(r->ru_utime.tv_sec + r->ru_stime.tv_sec) + (r->ru_utime.tv_usec + r->ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s NATS_URL SUBJECT ED25519_KEY_BASE64 BLOCK WARM_S WINDOW_S [libnats|one-thread]\n", argv[0]);
        return 2;
    }
    if (sodium_init() < 0) return 1;
    size_t klen = 0;
    const char *b64 = strncmp(argv[3], "ed25519:", 8) == 0 ? argv[3] + 8 : argv[3];
    if (sodium_base642bin(pk, sizeof pk, b64, strlen(b64), NULL, &klen, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
        klen != 32) {
        fprintf(stderr, "bad key\n");
        return 2;
    }
    unsigned char h[32];
    crypto_hash_sha256(h, pk, 32);
    memcpy(kid, h, 8);
    block = atoi(argv[4]);
    int warm = atoi(argv[5]), window = atoi(argv[6]);
    int err;
    dec = opus_decoder_create(RATE, 1, &err);
    if (err != OPUS_OK) return 1;
    pthread_t th;
    if (argc > 7 && strcmp(argv[7], "one-thread") == 0) {
        static const char *a[2];
        a[0] = argv[1];
        a[1] = argv[2];
        pthread_create(&th, NULL, one_thread, a);
    } else {
        natsConnection *nc = NULL;
        natsSubscription *sub = NULL;
        if (natsConnection_ConnectTo(&nc, argv[1]) != NATS_OK) { fprintf(stderr, "connect failed\n"); return 1; }
        if (natsConnection_Subscribe(&sub, nc, argv[2], on_msg, NULL) != NATS_OK) { fprintf(stderr, "sub failed\n"); return 1; }
        pthread_create(&th, NULL, sink, NULL);
    }
    /* The window starts WARM_S after the first frame played, so it falls inside the address. */
    struct timespec tick = {0, 10000000}, w = {warm, 0}, win = {window, 0};
    while (!started) nanosleep(&tick, NULL);
    nanosleep(&w, NULL);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    uint64_t m0 = msgs, f0 = frames, b0 = blocks, u0 = underruns;
    nanosleep(&win, NULL);
    getrusage(RUSAGE_SELF, &r1);
    double cpu = cpu_s(&r1) - cpu_s(&r0);
    long wakes = r1.ru_nvcsw - r0.ru_nvcsw;
    printf("{\"cpu_percent\": %.3f, \"wakeups_per_s\": %.1f, \"messages\": %llu, \"frames\": %llu, \"blocks\": %llu, "
           "\"underruns\": %llu, \"bad\": %llu, \"replayed\": %llu, \"us_per_frame\": %.1f, \"peak_rss_mb\": %.1f}\n",
           cpu / window * 100, (double)wakes / window, (unsigned long long)(msgs - m0),
           (unsigned long long)(frames - f0), (unsigned long long)(blocks - b0),
           (unsigned long long)(underruns - u0), (unsigned long long)bad, (unsigned long long)replayed,
           frames > f0 ? cpu * 1e6 / (double)(frames - f0) : 0.0, r1.ru_maxrss / 1024.0);
    fflush(stdout);
    _exit(0);
}
