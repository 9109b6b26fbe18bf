// The case study's race, replayed against one strategy: STRATEGY=v1|v2|v3|v4 hits POST /api/{STRATEGY}/buy
// with {productId, userId}; STRATEGY=prod hits the token-authenticated /v1 path of the real product.
//   BASE_URL, STRATEGY, PRODUCT (the product id / sale name), JWT_SECRET (prod only), BUYERS,
//   PEAK_RATE, MID_RATE, START_RATE, STAGE_SECONDS — the same spike shape as spike.js.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import { buy, config, summaryWriter } from './lib/buy.js';
import { spike, TREND_STATS } from './lib/shapes.js';

// MODE=capacity replaces the spike with a closed loop: VUS virtual users buying back to back for
// DURATION, which measures what the path sustains rather than how it answers a fixed arrival rate.
const capacity = {
  executor: 'constant-vus',
  vus: parseInt(__ENV.VUS || '64', 10),
  duration: __ENV.DURATION || '10s',
};

export const options = {
  scenarios: __ENV.MODE === 'capacity' ? { capacity } : { spike: spike() },
  summaryTrendStats: TREND_STATS,
};

const strategy = __ENV.STRATEGY || 'v4';

// Every 2xx is a purchase; 409/429 are answers. Anything else is a failure.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409, 429));

const ok = new Counter('strategy_accepted');
const refused = new Counter('strategy_refused');
const failed = new Counter('strategy_failed');

const base = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const product = __ENV.PRODUCT || 'bench';
const buyers = parseInt(__ENV.BUYERS || '100000', 10);
const prodCfg = strategy === 'prod' ? config() : null;

export default function () {
  if (prodCfg) {
    const res = buy({ ...prodCfg, sale: product });
    if (res.status === 202 || res.status === 200) ok.add(1);
    else if (res.status === 409 || res.status === 429) refused.add(1);
    else failed.add(1);
    return;
  }
  const res = http.post(
    `${base}/api/${strategy}/buy`,
    JSON.stringify({ productId: product, userId: `user-${Math.floor(Math.random() * buyers)}` }),
    { headers: { 'Content-Type': 'application/json' }, tags: { name: 'buy' } },
  );
  if (res.status >= 200 && res.status < 300) ok.add(1);
  else if (res.status === 409 || res.status === 400 || res.status === 429) refused.add(1);
  else failed.add(1);
}

export const handleSummary = summaryWriter(`strategy-${strategy}`);
